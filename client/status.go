package client

// What a connect shows: the endpoint table and the events that change it.

import (
	"fmt"
	"io"
	"time"

	"github.com/cachetun/cachetun/control"
)

// Event kinds.
const (
	EventUp       = "up"       // first session up, listeners open
	EventTopology = "topology" // a target's nodes or roles changed
	// EventTargetRemoved: the gateway took one target from the session
	// (Target; Reason says why); its ports are closed, the others go on.
	EventTargetRemoved = "target_removed"
	EventReconnecting  = "reconnecting" // the session was lost
	EventReconnected   = "reconnected"  // a new session is up
	EventError         = "error"        // a reconnect attempt failed
	EventRevoked       = "revoked"      // the gateway revoked the access: the connect ends
	EventFailed        = "failed"       // the connect ends on an error (before or after up), with its hint
)

// Event is one change a connect reports: to a script as a JSON line, to a
// terminal as a redraw.
type Event struct {
	Kind      string            `json:"event"`
	Time      time.Time         `json:"time"`
	Server    string            `json:"server,omitempty"`
	Transport string            `json:"transport,omitempty"`
	Target    string            `json:"target,omitempty"` // the target that changed (topology)
	Targets   []TargetEndpoints `json:"targets,omitempty"`
	Error     string            `json:"error,omitempty"`
	Reason    string            `json:"reason,omitempty"` // why a target was removed
	Hint      string            `json:"hint,omitempty"`   // the fix, for failed
}

// TargetEndpoints is one target's part of the endpoint table.
type TargetEndpoints struct {
	Name      string     `json:"name"`
	Profile   string     `json:"profile,omitempty"`
	Type      string     `json:"type"`
	Server    string     `json:"server,omitempty"`
	Transport string     `json:"transport,omitempty"`
	Nodes     []Endpoint `json:"nodes"`
}

// Endpoint is one local port and the node behind it.
type Endpoint struct {
	Local string `json:"local"`
	Node  string `json:"node"`
	Role  string `json:"role,omitempty"`
	Slots string `json:"slots,omitempty"`
}

// Endpoints returns the endpoint table of every target.
func (c *Client) Endpoints() []TargetEndpoints {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.endpointsLocked()
}

func (c *Client) endpointsLocked() []TargetEndpoints {
	out := make([]TargetEndpoints, 0, len(c.views))
	for _, v := range c.views {
		te := TargetEndpoints{Name: v.name, Profile: v.profile, Type: v.info.Type, Server: c.server, Transport: c.transport}
		nodes := make(map[string]control.NodeInfo, len(v.info.Nodes))
		for _, n := range v.info.Nodes {
			nodes[n.Addr] = n
		}
		for _, a := range v.order {
			n := nodes[a] // a node gone from the topology keeps its port, without a role
			te.Nodes = append(te.Nodes, Endpoint{Local: v.listeners[a].ln.Addr().String(), Node: a, Role: n.Role, Slots: n.Slots})
		}
		out = append(out, te)
	}
	return out
}

// Status is what a live view shows of the session.
type Status struct {
	Server    string `json:"server"`
	Transport string `json:"transport"`
	Connected bool   `json:"connected"`
	OpenConns int64  `json:"open_connections"`
}

// Status returns the session's state now.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Status{Server: c.server, Transport: c.transport, Connected: c.cur != nil, OpenConns: c.open.Load()}
}

// OpenConns is the number of local connections being relayed now.
func (c *Client) OpenConns() int64 { return c.open.Load() }

func (c *Client) emit(e Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.emitLocked(e)
}

func (c *Client) emitLocked(e Event) {
	if c.opts.OnEvent == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	c.opts.OnEvent(e)
}

// WriteTable prints the endpoint table:
//
//	prod-redis  redis-cluster  via quic gw.example.com:4433
//	  127.0.0.1:6379  ->  10.0.1.230:6379  master  slots 0-5460
func WriteTable(w io.Writer, transport, server string, targets []TargetEndpoints) {
	for _, t := range targets {
		name := t.Profile
		if name == "" {
			name = t.Name
		}
		fmt.Fprintf(w, "%s  %s  via %s %s\n", name, t.Type, transport, server)
		for _, n := range t.Nodes {
			line := fmt.Sprintf("  %s  ->  %s", n.Local, n.Node)
			if n.Role != "" {
				line += "  " + n.Role
				if n.Slots != "" {
					line += "  slots " + n.Slots
				}
			}
			fmt.Fprintln(w, line)
		}
	}
}

// hello is the Hello of this client without a key proof: its targets, or
// all of them, or a listing.
func (c *Client) hello() control.Hello {
	h := control.Hello{Client: "cachetun " + c.opts.Version, Target: c.opts.Target, All: c.opts.All, List: c.opts.List,
		Resume: !c.opts.NoResume && !c.opts.List}
	if len(c.opts.Targets) > 1 {
		c.mu.Lock()
		for _, t := range c.opts.Targets {
			if !c.removed[t.Name] { // a reconnect asks no more for a target taken away
				h.Targets = append(h.Targets, t.Name)
			}
		}
		c.mu.Unlock()
		if len(h.Targets) > 0 {
			h.Target = h.Targets[0]
		}
	}
	return h
}
