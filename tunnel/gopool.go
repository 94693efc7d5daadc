package tunnel

import (
	"sync/atomic"
	"time"
)

// Go runs f in a goroutine: one that ran an earlier f and waits for more
// work if there is one, else a new one. Use it for the goroutines each
// connection starts (the accept of a local connection, the gateway's
// serving of a stream, a relay's second direction). A new goroutine
// starts on a small stack, and a relay's write path (yamux's send, a
// select with a timer under it) is deep enough that each such goroutine
// grew it two or three times, copying it each time: 12 µs of the
// client's 120 µs of CPU per new connection under redis-benchmark -k 0.
// A reused goroutine keeps the stack it grew until the garbage collector
// shrinks an idle one.
//
// At most maxIdleWorkers goroutines wait for work, each for at most
// workerIdle: a burst of connections leaves no more than that behind.
func Go(f func()) {
	select {
	case work <- f:
	default:
		workers.Add(1)
		go worker(f)
	}
}

var (
	work        = make(chan func()) // unbuffered: a send succeeds only into a waiting worker
	idleWorkers atomic.Int32
	workers     atomic.Int64 // goroutines Go started, for the tests
)

const (
	maxIdleWorkers = 128
	workerIdle     = 5 * time.Second
)

func worker(f func()) {
	var t *time.Timer
	for {
		f()
		f = nil // let what it captured go while this one waits
		if idleWorkers.Add(1) > maxIdleWorkers {
			idleWorkers.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(workerIdle)
		} else {
			t.Reset(workerIdle)
		}
		select {
		case f = <-work:
			idleWorkers.Add(-1)
		case <-t.C:
			idleWorkers.Add(-1)
			return
		}
	}
}
