package testenv

import (
	"errors"
	"net"
	"testing"
)

// FreeLoopbackListener returns a TCP listener on 127.0.0.1 with a port chosen
// by the kernel. It is closed on cleanup; closing it earlier is fine. Prefer
// handing this listener to the code under test over handing it a port number.
func FreeLoopbackListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: listen on loopback: %v", err)
	}
	t.Cleanup(func() {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("testenv: close listener: %v", err)
		}
	})
	return ln
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a moment
// ago. All listeners are open at the same time, so the ports differ, and are
// closed before returning: a server started on one of them may still lose the
// race against another process, which callers detect and retry.
func freePorts(n int) ([]int, error) {
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
