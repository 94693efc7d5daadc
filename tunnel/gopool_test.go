package tunnel_test

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cachetun/cachetun/tunnel"
)

// waitIdle waits up to 5 s for at least one of Go's goroutines to wait
// for work.
func waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, idle := tunnel.GoWorkers()
		if idle > tunnel.MaxIdleWorkers {
			t.Fatalf("%d goroutines of Go wait for work, more than the %d allowed", idle, tunnel.MaxIdleWorkers)
		}
		if idle > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no goroutine of Go waits for work 5 s after its function returned")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestGo_Reuses: a goroutine whose function returned runs the next one;
// functions given while all are busy run at once, each in a goroutine of
// its own; once they return, at most MaxIdleWorkers stay.
func TestGo_Reuses(t *testing.T) {
	done := make(chan struct{})
	tunnel.Go(func() { close(done) })
	<-done
	// A worker counts itself idle just before it waits: a call that
	// comes in between starts a goroutine. 100 calls in a row, each after
	// a worker said it waits, may start a few, not one each.
	const calls, maxNew = 100, 10
	waitIdle(t)
	started, _ := tunnel.GoWorkers()
	for range calls {
		done := make(chan struct{})
		tunnel.Go(func() { close(done) })
		<-done
		waitIdle(t)
	}
	if s, _ := tunnel.GoWorkers(); s-started > maxNew {
		t.Fatalf("%d calls of Go in a row, each after the last returned, started %d goroutines; want at most %d", calls, s-started, maxNew)
	}

	// More functions at once than may wait: each runs now, none waits
	// for another to return.
	n := int(tunnel.MaxIdleWorkers) + 72
	var running, release sync.WaitGroup
	running.Add(n)
	release.Add(1)
	for range n {
		tunnel.Go(func() {
			running.Done()
			release.Wait()
		})
	}
	ran := make(chan struct{})
	go func() { running.Wait(); close(ran) }()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d functions given to Go at once did not all start within 10 s", n)
	}
	// Those n, and any idle ones of earlier tests: at most
	// MaxIdleWorkers of all of them stay.
	want := runtime.NumGoroutine() - n + int(tunnel.MaxIdleWorkers)
	release.Done()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines 5 s after %d functions of Go returned, with %d allowed to wait for work; want at most %d",
				runtime.NumGoroutine(), n, tunnel.MaxIdleWorkers, want)
		}
		time.Sleep(time.Millisecond)
	}
	if _, idle := tunnel.GoWorkers(); idle > tunnel.MaxIdleWorkers {
		t.Fatalf("%d goroutines of Go wait for work, more than the %d allowed", idle, tunnel.MaxIdleWorkers)
	}
}

// deep uses about n KiB of stack, as the relay's write path does.
//
//go:noinline
func deep(n int) byte {
	var b [1024]byte
	b[n%1024] = byte(n)
	if n == 0 {
		return b[0]
	}
	return deep(n-1) + b[n%1024]
}

// BenchmarkGo: a short-lived goroutine that needs 16 KiB of stack, started
// by the go statement and by Go (a goroutine reused, its stack grown).
func BenchmarkGo(b *testing.B) {
	for _, mode := range []string{"go", "tunnel.Go"} {
		b.Run(mode, func(b *testing.B) {
			done := make(chan struct{}, 1)
			f := func() { deep(16); done <- struct{}{} }
			b.ReportAllocs()
			for b.Loop() {
				if mode == "go" {
					go f()
				} else {
					tunnel.Go(f)
				}
				<-done
			}
		})
	}
}
