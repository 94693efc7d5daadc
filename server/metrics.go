package server

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus metrics, on a registry of its own so
// that several servers can live in one test process.
type metrics struct {
	reg           *prometheus.Registry
	sessions      prometheus.Gauge
	streamsActive prometheus.Gauge
	streams       *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cachetun_sessions", Help: "Authenticated client sessions open now."}),
		streamsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cachetun_streams", Help: "Proxied streams open now."}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_streams_total", Help: "Proxied streams by result."}, []string{"result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_bytes_total", Help: "Bytes relayed; up is client to cache."}, []string{"direction"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_auth_failures_total", Help: "Refused authentications by reason."}, []string{"reason"}),
	}
	m.reg.MustRegister(m.sessions, m.streamsActive, m.streams, m.bytes, m.authFailures,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// ServeMetrics serves /metrics on ln until ctx ends. It closes ln.
func (s *Server) ServeMetrics(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
