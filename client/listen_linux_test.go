package client

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// TestListenLocal_ExactFamily: --bind 0.0.0.0 listens on IPv4 only, so
// [::] on the same port stays free; Go's plain "tcp" (the control) takes
// both. It runs in a network namespace of its own, so nothing listens on
// the machine's interfaces.
func TestListenLocal_ExactFamily(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, and the
		// namespace with its last socket.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("skip: unshare: %w", err)
			return
		}
		errc <- checkFamilies()
	}()
	if err := <-errc; err != nil {
		if strings.HasPrefix(err.Error(), "skip:") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
}

func checkFamilies() error {
	ln, err := listenLocal("0.0.0.0", 0)
	if err != nil {
		return err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if got, want := ln.Addr().String(), fmt.Sprintf("0.0.0.0:%d", port); got != want {
		return fmt.Errorf("listening on %s, want %s", got, want)
	}
	ln6, err := net.Listen("tcp6", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		return fmt.Errorf("[::]:%d is taken by the 0.0.0.0 listener: %w", port, err)
	}
	ln6.Close()

	// Control: "tcp" on 0.0.0.0 is dual-stack and does take [::].
	both, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		return err
	}
	defer both.Close()
	p := both.Addr().(*net.TCPAddr).Port
	if l, err := net.Listen("tcp6", fmt.Sprintf("[::]:%d", p)); err == nil {
		l.Close()
		return errors.New("control failed: plain tcp on 0.0.0.0 left [::] free, so this test proves nothing here")
	}
	return nil
}
