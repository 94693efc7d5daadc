package server

import (
	"testing"

	"github.com/cachetun/cachetun/control"
)

// FuzzHelloTargets: any Hello payload decodes or fails cleanly, asks for
// no target twice and never more than it names; any Refresh payload picks
// one of the session's targets.
func FuzzHelloTargets(f *testing.F) {
	for _, seed := range []string{
		`{"target":"a"}`,
		`{"target":"a","targets":["a","b","a"]}`, // duplicate
		`{"all":true}`,                           // no identity: none
		`{"list":true,"target":"a"}`,             // listing asks for none
		`{"targets":[]}`,                         // empty list: target
		`{"targets":null,"target":""}`,
		`{"targets":"a"}`, // wrong type
		`[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(seed))
	}
	srv := &Server{}
	srv.tset.Store(newTargetSet(map[string]*target{"a": {name: "a"}, "b": {name: "b"}}))
	ts := []*target{{name: "a"}, {name: "b"}}
	f.Fuzz(func(t *testing.T, payload []byte) {
		if got := refreshTarget(ts, payload); got != ts[0] && got != ts[1] {
			t.Fatalf("refreshTarget picked %v", got)
		}
		h, err := control.DecodeHello(payload)
		if err != nil {
			return
		}
		names := (&session{srv: srv}).helloTargets(h)
		seen := map[string]bool{}
		for _, n := range names {
			if seen[n] {
				t.Fatalf("target %q asked for twice: %v", n, names)
			}
			seen[n] = true
		}
		if len(names) > max(len(h.Targets), 1) {
			t.Fatalf("%d targets from a hello naming %d", len(names), len(h.Targets))
		}
		if h.List && names != nil {
			t.Fatalf("a listing asked for targets %v", names)
		}
	})
}
