package server

import (
	"fmt"
	"strings"

	"github.com/cachetun/cachetun/auth"
)

// permitopen= (auth.Identity.PermitOpen) is a filter on top of targets=:
// every stream, on every transport, is checked against it by the node the
// gateway would dial (target, index in the current topology, address),
// however the client named it (cachetun streams name target and node
// address; ssh -L names TARGET, N.TARGET or host:port). A session's target
// (the Hello's) must have at least one node the filter permits.

// nodeIndex returns addr's index in the target's current topology, or -1
// (a seed that is not, or not yet, a published node).
func (t *target) nodeIndex(addr string) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for i, n := range t.info.Nodes {
		if n.Addr == addr {
			return i
		}
	}
	return -1
}

// mayOpen checks the identity's permitopen= for a stream to node of t.
func mayOpen(id *auth.Identity, t *target, node string) error {
	if id.PermitOpen == nil {
		return nil
	}
	return id.MayOpen(t.name, t.nodeIndex(node), node)
}

// permitsTarget returns "" when id may open some node of t (or has no
// permitopen= filter), else the reason for the client.
func permitsTarget(id *auth.Identity, t *target) string {
	if id.PermitOpen == nil {
		return ""
	}
	info := t.Info()
	for i, n := range info.Nodes {
		if id.MayOpen(t.name, i, n.Addr) == nil {
			return ""
		}
	}
	for _, seed := range t.cfg.Nodes {
		if id.MayOpen(t.name, -1, seed) == nil {
			return ""
		}
	}
	ps := make([]string, len(id.PermitOpen))
	for i, p := range id.PermitOpen {
		ps[i] = p.String()
	}
	return fmt.Sprintf("key %s may open no node of target %q: its authorized_keys line has permitopen=%q", id.Fingerprint, t.name, strings.Join(ps, ","))
}
