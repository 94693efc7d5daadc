package server

// Health endpoints on the metrics listener, for load balancers and
// Kubernetes probes:
//
//	/healthz  200 while the process serves HTTP at all (liveness).
//	/readyz   200 when every transport listener is serving, the server is
//	          not draining, and every target has at least one node that
//	          accepts a TCP connection (and the TLS handshake, for TLS
//	          upstreams) within readyDialTimeout; otherwise 503 and one
//	          line per problem, e.g. `target "sessions": 0 of 3 nodes
//	          reachable`. A target with some nodes down stays ready (a
//	          cluster in failover still serves); cachetun_target_nodes_up
//	          shows the count for alerts.
//
// The node checks are cached for readyCacheTTL so that probes from several
// load balancers cost the caches a handful of connections, not one per
// probe per node.

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	readyDialTimeout = time.Second
	readyCacheTTL    = 3 * time.Second
)

// targetHealth is what the last readiness check found for one target.
type targetHealth struct {
	name  string
	nodes int
	up    int
	err   error // the last node error, when some node is down
}

// readiness caches the node checks.
type readiness struct {
	mu      sync.Mutex // guards the following; held while a check runs, so probes share one
	at      time.Time
	targets []targetHealth
}

// checkTargets dials every node of every target, at most once per
// readyCacheTTL.
func (s *Server) checkTargets(ctx context.Context) []targetHealth {
	r := &s.ready
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < readyCacheTTL {
		return r.targets
	}
	ctx = context.WithoutCancel(ctx) // the result is shared: one prober leaving must not spoil it
	set := s.targets()
	var targets []*target
	for _, name := range set.names {
		targets = append(targets, set.get(name))
	}
	out := make([]targetHealth, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		addrs := t.nodeAddrs()
		out[i] = targetHealth{name: t.name, nodes: len(addrs)}
		var mu sync.Mutex
		for _, addr := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := t.probe(ctx, addr)
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					out[i].up++
				} else {
					out[i].err = fmt.Errorf("%s: %w", addr, err)
				}
			}()
		}
	}
	wg.Wait()
	r.at, r.targets = time.Now(), out
	return out
}

// invalidate drops the cached node checks: the targets changed.
func (r *readiness) invalidate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at = time.Time{}
}

// nodeAddrs returns the addresses of the target's current nodes.
func (t *target) nodeAddrs() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]string, 0, len(t.info.Nodes))
	for _, n := range t.info.Nodes {
		if !slices.Contains(out, n.Addr) {
			out = append(out, n.Addr)
		}
	}
	return out
}

// probe dials addr with readyDialTimeout and, for TLS upstreams, completes
// the handshake; it sends no cache command (and so no AUTH).
func (t *target) probe(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, readyDialTimeout)
	defer cancel()
	to, err := t.dialAddr(addr) // a discovered node only at its checked IP
	if err != nil {
		return err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", to)
	if err != nil {
		return err
	}
	defer c.Close()
	if t.upstreamTLS != nil {
		cfg := t.upstreamTLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		if err := tls.Client(c, cfg).HandshakeContext(ctx); err != nil {
			return fmt.Errorf("%w: %w", errUpstreamTLS, err)
		}
	}
	return nil
}

// notReady lists why the server is not ready; empty means ready.
func (s *Server) notReady(ctx context.Context) []string {
	var out []string
	select {
	case <-s.draining:
		out = append(out, "draining: the gateway is shutting down")
	default:
	}
	if want, have := s.wantListeners(), s.servingListeners(); have < want {
		out = append(out, fmt.Sprintf("listeners: %d of %d serving", have, want))
	}
	for _, th := range s.checkTargets(ctx) {
		if th.up == 0 {
			msg := fmt.Sprintf("target %q: 0 of %d nodes reachable", th.name, th.nodes)
			if th.err != nil {
				msg += " (" + th.err.Error() + ")"
			}
			out = append(out, msg)
		}
	}
	return out
}

// wantListeners is the number of listeners the configuration asks for.
func (s *Server) wantListeners() int {
	n := 0
	for _, a := range []string{s.config().Listen.QUIC, s.config().Listen.TLS, s.config().Listen.SSH} {
		if a != "" {
			n++
		}
	}
	return n
}

func (s *Server) servingListeners() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.listeners)
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	problems := s.notReady(r.Context())
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: "+strings.Join(problems, "; "))
		return
	}
	fmt.Fprintln(w, "ready")
}

// healthCollector exports the cached node checks as
// cachetun_target_nodes{target} and cachetun_target_nodes_up{target}.
type healthCollector struct {
	s          *Server
	nodes, up  *prometheus.Desc
	readyGauge *prometheus.Desc
}

func newHealthCollector(s *Server) *healthCollector {
	return &healthCollector{
		s: s,
		nodes: prometheus.NewDesc("cachetun_target_nodes",
			"Nodes the target has now (configured, or discovered).", []string{"target"}, nil),
		up: prometheus.NewDesc("cachetun_target_nodes_up",
			"Nodes of the target that accepted a connection (and TLS handshake) within 1 s at the last readiness check (cached 3 s).", []string{"target"}, nil),
		readyGauge: prometheus.NewDesc("cachetun_ready",
			"1 when /readyz answers 200, else 0.", nil, nil),
	}
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.nodes
	ch <- c.up
	ch <- c.readyGauge
}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*readyDialTimeout)
	defer cancel()
	for _, th := range c.s.checkTargets(ctx) {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(th.nodes), th.name)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, float64(th.up), th.name)
	}
	ready := 0.0
	if len(c.s.notReady(ctx)) == 0 {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(c.readyGauge, prometheus.GaugeValue, ready)
}
