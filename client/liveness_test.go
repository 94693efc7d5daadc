package client

import (
	"slices"
	"testing"
	"time"
)

// TestLiveness_ProbeVerdicts: a probe is settled by anything heard after
// it was sent and only then; unanswered past its deadline it is overdue; a
// suspect probe tightens the deadline of a keepalive in flight and makes
// new streams wait; a stall is probed once.
func TestLiveness_ProbeVerdicts(t *testing.T) {
	l := newLiveness(2*time.Second, time.Second)
	if dead, _ := l.overdue(); l.pending() != nil || dead != nil || l.settle(false) {
		t.Fatal("a fresh session is in doubt")
	}
	l.noteHeard() // before the probe: it does not answer it
	p, fresh := l.sent(false, 5*time.Second, "keepalive")
	if !fresh || l.pending() != nil {
		t.Fatal("a keepalive just sent must be fresh and not make streams wait")
	}
	if l.settle(false) {
		t.Fatal("settled with nothing heard")
	}
	q, fresh := l.sent(true, -time.Millisecond, "stall") // a deadline already passed
	if fresh || q != p || !p.suspect || time.Until(p.deadline) > 0 {
		t.Fatalf("a suspect probe over a keepalive: fresh %v, suspect %v, deadline in %s", fresh, p.suspect, time.Until(p.deadline))
	}
	if l.pending() == nil {
		t.Fatal("a suspect probe must make new streams wait")
	}
	if dead, _ := l.overdue(); dead != p {
		t.Fatal("an unanswered probe past its deadline is not overdue")
	}
	p.deadline = time.Now().Add(-time.Second) // seen 1s late: moved once
	if dead, recheck := l.overdue(); dead != nil || time.Until(recheck) < 900*time.Millisecond {
		t.Fatalf("a deadline seen 1s late: dead %v, recheck in %s; want it moved by ProbeTimeout", dead != nil, time.Until(recheck))
	}
	p.deadline = time.Now().Add(-time.Second)
	if dead, _ := l.overdue(); dead != p {
		t.Fatal("a deadline is moved more than once")
	}
	l.noteHeard()
	if dead, _ := l.overdue(); dead != nil || !l.settle(false) {
		t.Fatal("a byte heard after the probe must answer it")
	}
	select {
	case <-p.done:
	default:
		t.Fatal("settle did not release the streams waiting on the probe")
	}

	w := &watchedStream{live: l}
	l.add(w)
	w.mark.Store(time.Now().Add(-3 * time.Second).UnixNano())
	if why := l.scan(); why == "" {
		t.Fatal("a stream stalled for 3s was not probed")
	}
	if why := l.scan(); why != "" {
		t.Fatalf("the same stall probed twice: %s", why)
	}
	w.heard()
	w.waiting()
	if why := l.scan(); why != "" {
		t.Fatalf("a fresh write probed at once: %s", why)
	}
	l.remove(w)
}

// TestServerOrder: after a session ends, its gateway is tried last.
func TestServerOrder(t *testing.T) {
	c := &Client{opts: Options{Servers: []string{"a", "b", "c"}}}
	if got := c.serverOrder(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("order %v", got)
	}
	a := "a"
	c.avoid.Store(&a)
	if got := c.serverOrder(); !slices.Equal(got, []string{"b", "c", "a"}) {
		t.Fatalf("order after a's session ended: %v, want b c a", got)
	}
}
