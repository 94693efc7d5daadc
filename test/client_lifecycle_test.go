package test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// TestConnect_RunStopsEverything: client.New starts no goroutine, and
// Client.Run returns only when every goroutine it started has stopped and
// every session it opened is closed. The client holds a local connection
// relayed on a session the gateway sent GoAway on (it drains, with a
// drain_timeout of 60 s, so it would keep that session open for a minute)
// and is reconnecting when its context is cancelled: Run must return
// within 10 s, its ports must be closed, and goleak finds no goroutine
// left of the client (nor of the gateway's side of the session, which
// ends with it), on every transport.
func TestConnect_RunStopsEverything(t *testing.T) {
	forEachTransport(t, func(t *testing.T, transport string) {
		r := testenv.StartRedis(t)
		k := newKey(t, "alice")
		g := startGateway(t, map[string]*server.Target{"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}}},
			[]string{k.Line}, func(c *server.Config) { c.Limits.DrainTimeout = 60 * time.Second })
		logger, _ := newTestLogger(t)
		zero := 0
		events := make(chan client.Event, 64)
		opts := client.Options{
			Servers: []string{g.ServerAddr(transport)}, Target: "cache", Transport: transport,
			Identity: k.Path, LocalPort: &zero, KnownHosts: g.KnownHosts(t), Logger: logger,
			Ping: 2 * time.Second,
			OnEvent: func(ev client.Event) {
				select {
				case events <- ev:
				default:
				}
			},
		}

		// The gateway's accept loops start just after its Ready; they
		// belong to the fixture and run to the end.
		before := []goleak.Option{goleak.IgnoreCurrent(), goleak.IgnoreAnyFunction("github.com/cachetun/cachetun/server.(*Server).serve"),
			// a goroutine of tunnel.Go waiting for work (a bounded few, for seconds)
			goleak.IgnoreTopFunction("github.com/cachetun/cachetun/tunnel.worker")}
		cl, err := client.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := goleak.Find(before...); err != nil {
			t.Fatalf("client.New started goroutines: %v", err)
		}

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		runErr := make(chan error, 1)
		go func() { runErr <- cl.Run(ctx) }()
		select {
		case <-cl.Ready():
		case err := <-runErr:
			t.Fatalf("Run: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("client not up within 20 s")
		}
		if err := cl.Run(ctx); !errors.Is(err, client.ErrRunning) {
			t.Fatalf("second Run = %v, want ErrRunning", err)
		}
		local := cl.LocalAddrs()[r.Addr]
		nc, err := net.Dial("tcp", local)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if err := redisPing(nc); err != nil {
			t.Fatalf("PING through the tunnel: %v", err)
		}

		// The gateway drains: GoAway; the relayed connection keeps the old
		// session open, and the client's reconnects are refused.
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			g.Srv.Drain(context.Background())
		}()
		deadline := time.After(20 * time.Second)
		for reconnecting := false; !reconnecting; {
			select {
			case ev := <-events:
				reconnecting = ev.Kind == client.EventReconnecting
			case <-deadline:
				t.Fatal("no reconnecting event within 20 s of the gateway's GoAway")
			}
		}

		start := time.Now()
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Fatalf("Run after cancel = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return within 10 s of cancel (the GoAway'd session holds it?)")
		}
		t.Logf("%s: Run returned %v after cancel", transport, time.Since(start).Round(time.Millisecond))
		select {
		case <-cl.Done():
		default:
			t.Fatal("Done not closed after Run returned")
		}
		if c, err := net.Dial("tcp", local); err == nil {
			c.Close()
			t.Fatalf("local port %s still accepts after Run returned", local)
		}
		select {
		case <-drained: // the client closed its session, so the drain ends
		case <-time.After(20 * time.Second):
			t.Fatal("the gateway's drain did not end within 20 s of the client closing its session")
		}
		nc.Close()
		if err := goleak.Find(before...); err != nil {
			t.Fatalf("goroutines left after Run returned: %v", err)
		}
	})
}
