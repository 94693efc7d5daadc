package client

import (
	"context"
	"sync"
)

// Group is one connect of several sessions (one per gateway): it runs
// their clients together, is up when every one is, and ends them all when
// the first ends.
type Group struct {
	clients []*Client
	up      chan struct{} // closed when every client is up
}

// NewGroup builds one client per options (see New); none is started.
func NewGroup(sessions []Options) (*Group, error) {
	g := &Group{up: make(chan struct{})}
	for _, opts := range sessions {
		cl, err := New(opts)
		if err != nil {
			return nil, err
		}
		g.clients = append(g.clients, cl)
	}
	return g, nil
}

// Clients returns the group's clients, in the order of their options.
func (g *Group) Clients() []*Client { return g.clients }

// Ready is closed once every client is up. If one fails first it is never
// closed: Run returns that client's error.
func (g *Group) Ready() <-chan struct{} { return g.up }

// Endpoints returns the endpoints of every client, in order.
func (g *Group) Endpoints() []TargetEndpoints {
	var all []TargetEndpoints
	for _, cl := range g.clients {
		all = append(all, cl.Endpoints()...)
	}
	return all
}

// Run runs every client until ctx ends or one of them returns (its
// first connect failed, or a final error such as a revocation): that
// ends the others. It returns the first client's result once every
// client's Run, and Run's own watcher, has returned. Like Client.Run it
// may be called once.
func (g *Group) Run(ctx context.Context) error {
	if len(g.clients) == 0 {
		close(g.up)
		return nil
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(g.clients))
	var wg sync.WaitGroup
	for _, cl := range g.clients {
		wg.Go(func() { errs <- cl.Run(rctx) })
	}
	wg.Go(func() { // Ready, once every client is up
		for _, cl := range g.clients {
			select {
			case <-cl.Ready():
			case <-rctx.Done():
				return
			}
		}
		close(g.up)
	})
	err := <-errs
	cancel()
	wg.Wait()
	return err
}
