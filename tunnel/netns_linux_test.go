//go:build linux

package tunnel_test

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Network namespaces for the tests of this package: each test creates its
// own and deletes them in Cleanup; no other network is touched.

var netnsSeq atomic.Int32

// newNetns creates an empty network namespace with lo up and returns its
// name; it is deleted when t ends. It needs root (CI runs as root).
func newNetns(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (CI runs the tests as root)")
	}
	name := fmt.Sprintf("ctq-%d-%d", os.Getpid(), netnsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete network namespace %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// vethPair links namespaces a and b by a veth pair, ifA in a and ifB in b,
// both up.
func vethPair(t testing.TB, a, ifA, b, ifB string) {
	t.Helper()
	run(t, "ip", "link", "add", ifA, "netns", a, "type", "veth", "peer", "name", ifB, "netns", b)
	run(t, "ip", "-n", a, "link", "set", ifA, "up")
	run(t, "ip", "-n", b, "link", "set", ifB, "up")
}

// run runs a command and fails t with its output if it fails.
func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// inNetns runs fn on an OS thread moved into the namespace ns, so that
// the sockets fn creates belong to ns; they keep working from any thread
// once fn returned. The thread goes back to its own namespace after fn,
// or, if that fails, is ended with its goroutine (it stays locked).
func inNetns(t testing.TB, ns string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer own.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		fn()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave network namespace %s: %w", ns, err)
			return // the thread stays locked and ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
