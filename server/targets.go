package server

// Several targets on one session, and target listings (Hello.Targets,
// Hello.All, Hello.List; see tunnel/PROTOCOL.md).

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
)

// helloTargets returns the target names a Hello asks for: every allowed
// target for All, Targets when set, else Target; duplicates dropped. A List
// Hello asks for none.
func (ss *session) helloTargets(h *control.Hello) []string {
	if h.List {
		return nil
	}
	if h.All {
		// Every target the key may use: targets=, and permitopen= by the
		// nodes known now (a cluster's seeds before its first discovery).
		var out []string
		for _, n := range ss.srv.targets().names {
			if id := ss.identity(); id != nil && id.Allows(n) && permitsTarget(id, ss.srv.target(n)) == "" {
				out = append(out, n)
			}
		}
		return out
	}
	names := h.Targets
	if len(names) == 0 {
		names = []string{h.Target}
	}
	seen := make(map[string]bool, len(names))
	var out []string
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// checkHelloTargets refuses a Hello that names a target that does not
// exist or that the key may not use, or more than control.MaxHelloTargets
// targets: it returns the refusal, or nil.
func (ss *session) checkHelloTargets(h *control.Hello) *control.Refusal {
	s := ss.srv
	if len(h.Targets) > control.MaxHelloTargets {
		return &control.Refusal{Code: control.CodeProtocol, Log: "too many targets requested",
			Error: fmt.Sprintf("hello names %d targets, at most %d are allowed", len(h.Targets), control.MaxHelloTargets),
			Hint:  "connect fewer targets per process"}
	}
	names := ss.helloTargets(h)
	if h.All && len(names) == 0 {
		return &control.Refusal{Code: control.CodeTargetDenied, Log: "all targets requested, but the key may use none",
			Error: fmt.Sprintf("key %s may use no target on this gateway", ss.ident.Fingerprint),
			Hint:  "ask the operator to extend targets= in authorized_keys"}
	}
	for _, name := range names {
		if s.target(name) == nil {
			return &control.Refusal{Code: control.CodeUnknownTarget, Log: "unknown target requested",
				Error: fmt.Sprintf("target %q is not configured on this gateway", name),
				Hint:  "check the target name; targets your key may use: " + ss.allowedTargets()}
		}
		if !ss.identity().Allows(name) {
			return &control.Refusal{Code: control.CodeTargetDenied, Log: "target denied",
				Error: fmt.Sprintf("key %s may not use target %q", ss.ident.Fingerprint, name),
				Hint:  "targets your key may use: " + ss.allowedTargets() + "; or ask the operator to extend targets= in authorized_keys"}
		}
	}
	return nil
}

// targetList answers a List Hello: the targets the key may use, with
// their type and node count once discovered (waits at most timeout).
func (ss *session) targetList(ctx context.Context) []control.TargetSummary {
	s := ss.srv
	var ts []*target
	for _, n := range s.targets().names {
		if ss.identity().Allows(n) {
			ts = append(ts, s.target(n))
		}
	}
	waitAllDiscovered(ctx, ts, s.config().Limits.DialTimeout)
	out := make([]control.TargetSummary, 0, len(ts))
	for _, t := range ts {
		if permitsTarget(ss.identity(), t) != "" {
			continue // permitopen= allows none of its nodes
		}
		info := t.Info()
		out = append(out, control.TargetSummary{Name: t.name, Type: info.Type, Nodes: len(info.Nodes)})
	}
	return out
}

// waitAllDiscovered waits for the first discovery round of every target,
// at most timeout in all.
func waitAllDiscovered(ctx context.Context, ts []*target, timeout time.Duration) {
	var wg sync.WaitGroup
	for _, t := range ts {
		wg.Go(func() { t.waitDiscovered(ctx, timeout) })
	}
	wg.Wait()
}

// watchTargets sends a target on the returned channel after each of its
// topology changes, starting from the channels in from (taken before the
// Welcome's topologies were read, so that no change is missed). The
// goroutines end with ctx; wait on wg after cancelling it.
func watchTargets(ctx context.Context, wg *sync.WaitGroup, ts []*target, from []<-chan struct{}) <-chan *target {
	out := make(chan *target)
	for i, t := range ts {
		ch := from[i]
		wg.Go(func() {
			for {
				select {
				case <-ch:
				case <-ctx.Done():
					return
				}
				// Take the next channel before the receiver reads Info.
				ch = t.Changed()
				select {
				case out <- t:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	return out
}

// watchRetired sends the index of a target in ts when a reload retires it
// (reload.go). The goroutines end with ctx; wait on wg after cancelling it.
func watchRetired(ctx context.Context, wg *sync.WaitGroup, ts []*target) <-chan int {
	out := make(chan int)
	for i, t := range ts {
		wg.Go(func() {
			select {
			case <-t.life.Done():
			case <-ctx.Done():
				return
			}
			select {
			case out <- i:
			case <-ctx.Done():
			}
		})
	}
	return out
}

// refreshTarget returns the session's target that a FrameRefresh payload
// names; an empty or unknown name means the first one.
func refreshTarget(ts []*target, payload []byte) *target {
	if len(payload) > 0 {
		var r control.Refresh
		if json.Unmarshal(payload, &r) == nil {
			for _, t := range ts {
				if t.name == r.Target {
					return t
				}
			}
		}
	}
	return ts[0]
}

// targetsVerdict judges the targets of a session again: it must end when
// none of them stays allowed (targets= or permitopen=) or configured (a
// reload removed them); the streams of a target taken away from a session
// of several are cut by cutStreams, those of a removed one by its retiring.
func (ss *session) targetsVerdict(id *auth.Identity, names []string) *verdict {
	ss.ctrlMu.Lock()
	all := ss.all
	ss.ctrlMu.Unlock()
	if all { // --all: the session goes on while the key may use any target
		set := ss.srv.targets()
		for _, n := range set.names {
			if id.Allows(n) && permitsTarget(id, set.get(n)) == "" {
				return nil
			}
		}
	}
	var denied, removed string
	for _, n := range names {
		t := ss.srv.target(n)
		if t == nil { // a reload removed it
			if removed == "" {
				removed = n
			}
			continue
		}
		if id.Allows(n) && permitsTarget(id, t) == "" {
			return nil
		}
		if denied == "" {
			denied = n
		}
	}
	if denied == "" && removed != "" {
		return &verdict{code: control.CodeTargetRemoved,
			msg: fmt.Sprintf("target %q was removed from the gateway's configuration", removed),
			err: fmt.Errorf("a reload removed target %q", removed)}
	}
	if denied == "" {
		return nil
	}
	return &verdict{code: control.CodeTargetDenied,
		msg: fmt.Sprintf("key %s may no longer use target %q", id.Fingerprint, denied),
		err: fmt.Errorf("target %q is no longer allowed for the key (targets= or permitopen=)", denied)}
}
