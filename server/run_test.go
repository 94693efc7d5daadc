package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cachetun/cachetun/auth"
)

// newRunServer builds a server listening on loopback port 0 on every
// transport and for metrics, with one redis target that nothing serves.

// idleWorkers: a goroutine of tunnel.Go that waits for work (a bounded
// few, for seconds) is not a leak.
var idleWorkers = goleak.IgnoreTopFunction("github.com/cachetun/cachetun/tunnel.worker")

func newRunServer(t *testing.T, drain time.Duration) *Server {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Version = "v9.9.9-run"
	cfg.HostKey = filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(cfg.HostKey, "host"); err != nil {
		t.Fatal(err)
	}
	cfg.AuthorizedKeys = filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(cfg.AuthorizedKeys, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Listen = Listen{QUIC: "127.0.0.1:0", TLS: "127.0.0.1:0", SSH: "127.0.0.2:0"} // SSH and TLS may not share an address
	cfg.Metrics = "127.0.0.1:0"
	cfg.Limits.DrainTimeout = drain
	cfg.Targets = map[string]*Target{"cache": {Type: TypeRedis, Nodes: []string{"127.0.0.1:1"}}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startRun(t *testing.T, s *Server, ctx context.Context) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return done
}

func waitRun(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v after %s, want nil", err, what)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Run still running 10s after %s", what)
	}
}

// TestServer_Run: New does not listen; Run opens every listener and the
// metrics server, and when its context ends returns with all of them
// closed and no goroutine of its own left; a second Run is refused.
func TestServer_Run(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), idleWorkers)
	s := newRunServer(t, time.Hour) // no stream is open: the drain cannot wait
	if a := s.Addrs(); a != (Addrs{}) {
		t.Fatalf("Addrs before Run = %+v, want none: New must not listen", a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := startRun(t, s, ctx)
	a := s.Addrs()
	if a.QUIC == nil || a.TLS == nil || a.SSH == nil || a.Metrics == nil {
		t.Fatalf("Addrs = %+v, want all four", a)
	}
	// Ready means serving: /readyz counts the listeners from then on.
	if got, want := s.servingListeners(), s.wantListeners(); got != want || want != 3 {
		t.Errorf("at Ready: %d of %d listeners serving, want 3 of 3", got, want)
	}
	resp, err := http.Get("http://" + a.Metrics.String() + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %d, want 200", resp.StatusCode)
	}
	if err := s.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
	cancel()
	waitRun(t, done, "its context ended")
	for _, ta := range []net.Addr{a.TLS, a.SSH, a.Metrics} {
		if c, err := net.Dial("tcp", ta.String()); err == nil {
			c.Close()
			t.Errorf("%s still accepts after Run returned", ta)
		}
	}
	s.Close() // after Run: returns at once, idempotent
	s.Close()
}

// TestServer_RunListenError: a port already taken is a *ListenError naming
// the listener; Ready never closes and nothing stays open.
func TestServer_RunListenError(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), idleWorkers)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s := newRunServer(t, time.Second)
	cfg := *s.config()
	cfg.Listen.SSH = busy.Addr().String()
	s.conf.Store(&cfg)
	err = s.Run(context.Background())
	var le *ListenError
	if !errors.As(err, &le) || le.Listener != "ssh" || le.Addr != cfg.Listen.SSH {
		t.Fatalf("Run = %v, want a *ListenError for ssh on %s", err, cfg.Listen.SSH)
	}
	select {
	case <-s.Ready():
		t.Fatal("Ready closed although Run failed to listen")
	default:
	}
}

// TestServer_DrainWaitsForLastStream: with a stream open and a drain
// timeout of an hour, Run's drain ends when that stream ends, not at the
// timeout; a Close cuts a drain short.
func TestServer_DrainWaitsForLastStream(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), idleWorkers)
	t.Run("last stream ends", func(t *testing.T) {
		s := newRunServer(t, time.Hour)
		ctx, cancel := context.WithCancel(context.Background())
		done := startRun(t, s, ctx)
		s.streams.add(1) // a stream of some session
		cancel()
		<-s.draining // the drain has begun
		select {
		case <-s.streams.idle():
			t.Fatal("idle while a stream is open")
		default:
		}
		s.streams.add(-1)
		waitRun(t, done, "the last stream ended")
	})
	t.Run("close cuts the drain", func(t *testing.T) {
		s := newRunServer(t, time.Hour)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := startRun(t, s, ctx)
		s.streams.add(1) // never ends
		cancel()
		<-s.draining
		s.Close()
		waitRun(t, done, "Close")
	})
}

// TestStreamGauge: idle is closed exactly while no stream is open.
func TestStreamGauge(t *testing.T) {
	var g streamGauge
	isIdle := func() bool {
		select {
		case <-g.idle():
			return true
		default:
			return false
		}
	}
	if !isIdle() {
		t.Fatal("a new gauge is not idle")
	}
	g.add(1)
	ch := g.idle()
	g.add(1)
	if isIdle() {
		t.Fatal("idle with 2 streams open")
	}
	g.add(-1)
	select {
	case <-ch:
		t.Fatal("idle channel closed with 1 stream open")
	default:
	}
	g.add(-1)
	select {
	case <-ch:
	default:
		t.Fatal("the channel taken while streams were open did not close when the last ended")
	}
	if !isIdle() || g.count() != 0 {
		t.Fatalf("after the last stream: idle %v, count %d; want true, 0", isIdle(), g.count())
	}
	// A session's count feeds the gauge.
	c := streamCount{total: &g}
	if n := c.Add(1); n != 1 || g.count() != 1 {
		t.Fatalf("streamCount.Add(1) = %d, gauge %d; want 1, 1", n, g.count())
	}
	c.Add(-1)
	if !isIdle() {
		t.Fatal("not idle after the session's stream ended")
	}
}
