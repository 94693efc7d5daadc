package server

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"runtime"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cachetun/cachetun/tunnel"
)

// Stream results (label result of cachetun_streams_total): what became of
// a stream, as a fixed set of snake_case words.
const (
	resultOK            = "ok"             // relayed until either side closed
	resultIdle          = "idle_timeout"   // closed by limits.idle_timeout
	resultReset         = "reset"          // either side reset or the session died
	resultTargetRemoved = "target_removed" // a reload removed or changed the target
	// Refusals, one per tunnel.Status.
	resultDenied        = "denied"
	resultUnreachable   = "unreachable"
	resultUnknownTarget = "unknown_target"
	resultUnknownNode   = "unknown_node"
	resultBadRequest    = "bad_request"
	resultLimit         = "limit"
	resultShutdown      = "shutdown"
)

// statusResult is the result label of a refused stream.
func statusResult(st tunnel.Status) string {
	switch st {
	case tunnel.StatusOK:
		return resultOK
	case tunnel.StatusDenied:
		return resultDenied
	case tunnel.StatusUnreachable:
		return resultUnreachable
	case tunnel.StatusUnknownTarget:
		return resultUnknownTarget
	case tunnel.StatusUnknownNode:
		return resultUnknownNode
	case tunnel.StatusBadRequest:
		return resultBadRequest
	case tunnel.StatusLimit:
		return resultLimit
	case tunnel.StatusShutdown:
		return resultShutdown
	}
	return "other"
}

// Reasons of upstream dial errors (cachetun_upstream_dial_errors_total).
const (
	dialTimeout = "timeout" // no answer within limits.dial_timeout
	dialRefused = "refused" // connection refused: nothing listens there
	dialTLS     = "tls"     // the upstream TLS handshake failed
	dialAuth    = "auth"    // the cache refused the gateway's AUTH
	dialOther   = "other"
)

// dialReason classifies an error of target.dial.
func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, ErrUpstreamAuth):
		return dialAuth
	case errors.Is(err, errUpstreamTLS):
		return dialTLS
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return dialTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return dialRefused
	}
	var re tls.RecordHeaderError
	if errors.As(err, &re) {
		return dialTLS
	}
	return dialOther
}

// dialBuckets are the bounds of the dial latency histogram, in seconds:
// 0.5 ms (same AZ, no TLS) to 5 s (limits.dial_timeout's default).
var dialBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// metrics are the gateway's Prometheus metrics, on a registry of its own so
// that several servers can live in one test process. The series are listed
// in README.md ("Metrics").
type metrics struct {
	reg *prometheus.Registry
	// keyLabel adds the client key's fingerprint as label key to the
	// session, stream and byte series (config metrics_key_label). Off by
	// default: every key is a new series.
	keyLabel bool

	sessions          *prometheus.GaugeVec   // transport, target[, key]
	sessionsTotal     *prometheus.CounterVec // transport, target[, key]
	streams           *prometheus.GaugeVec   // transport, target
	streamsTotal      *prometheus.CounterVec // transport, target, result[, key]
	streamsResumed    prometheus.Counter
	bytes             *prometheus.CounterVec // target, direction[, key]
	dialErrors        *prometheus.CounterVec // target, reason
	dialSeconds       *prometheus.HistogramVec
	authFailures      *prometheus.CounterVec // reason
	discoveryRounds   *prometheus.CounterVec // target, result
	discoveryRejected *prometheus.CounterVec // target, reason
	reloads           *prometheus.CounterVec // result
	quicSendErrors    *prometheus.CounterVec // errno
	quicRefreshes     prometheus.Counter
}

func newMetrics(keyLabel bool, version string) *metrics {
	withKey := func(labels ...string) []string {
		if keyLabel {
			return append(labels, "key")
		}
		return labels
	}
	m := &metrics{
		reg:      prometheus.NewRegistry(),
		keyLabel: keyLabel,
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cachetun_sessions",
			Help: "Authenticated client sessions open now, by transport and target (target is empty for stock OpenSSH sessions, which name none)."},
			withKey("transport", "target")),
		sessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_sessions_total",
			Help: "Authenticated client sessions since start, by transport and target."},
			withKey("transport", "target")),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cachetun_streams",
			Help: "Proxied streams open now, by transport and target."},
			[]string{"transport", "target"}),
		streamsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_streams_total",
			Help: "Proxied streams by transport, target and result: ok, idle_timeout, reset, target_removed, or the refusal (denied, unreachable, unknown_target, unknown_node, bad_request, limit, shutdown)."},
			withKey("transport", "target", "result")),
		streamsResumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachetun_streams_resumed_total",
			Help: "Streams re-attached to a new session after their session died. Always 0: this gateway does not resume streams yet."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_bytes_total",
			Help: "Bytes relayed by target and direction: up is client to cache, down cache to client."},
			withKey("target", "direction")),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_upstream_dial_errors_total",
			Help: "Failed connections to cache nodes for client streams, by target and reason: timeout, refused, tls, auth, other."},
			[]string{"target", "reason"}),
		dialSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cachetun_upstream_dial_seconds",
			Help:    "Time to connect to a cache node for a client stream, TLS and AUTH included, by target (successful dials only).",
			Buckets: dialBuckets},
			[]string{"target"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_auth_failures_total",
			Help: "Refused authentications and session set-ups by reason, e.g. unknown_key, bad_signature, rate_limited, unknown_target, target_denied."},
			[]string{"reason"}),
		discoveryRounds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_discovery_rounds_total",
			Help: "Topology discovery rounds of redis-cluster and discovering memcached targets, by target and result (ok, error)."},
			[]string{"target", "result"}),
		discoveryRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_discovery_rejected_nodes_total",
			Help: "Nodes that a discovery round named but the gateway refused to serve, by target and reason."},
			[]string{"target", "reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_config_reloads_total",
			Help: "Reloads of server.yaml and authorized_keys (SIGHUP) by result: ok, error (the old configuration stays)."},
			[]string{"result"}),
		quicSendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachetun_quic_send_errors_total",
			Help: "QUIC packets the gateway could not send, by errno (ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, ENETDOWN, ENOBUFS, EPERM): each is taken as lost and sent again; the connection stays open."},
			[]string{"errno"}),
		quicRefreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cachetun_quic_window_refreshes_total",
			Help: "Times the gateway asked a QUIC client to move to a new path because the gateway's congestion window had stalled far below what the path carries (a quic-go slow-start exit; see tunnel/quicwindow.go)."}),
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "cachetun_build_info",
		Help: "Always 1; the labels name the running build."}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
	m.reg.MustRegister(m.sessions, m.sessionsTotal, m.streams, m.streamsTotal, m.streamsResumed,
		m.bytes, m.dialErrors, m.dialSeconds, m.authFailures, m.discoveryRounds, m.discoveryRejected,
		m.reloads, m.quicSendErrors, m.quicRefreshes, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"ok", "error"} {
		m.reloads.WithLabelValues(r) // both series from the start, so rate() sees the first error
	}
	for _, e := range tunnel.QUICSendErrnos() {
		m.quicSendErrors.WithLabelValues(e)
	}
	return m
}

// quicSendErrorCounter returns QUICConfig.OnSendError for the gateway's
// listener: it counts in cachetun_quic_send_errors_total without a label
// lookup per packet.
func (m *metrics) quicSendErrorCounter() func(errno string) {
	counters := make(map[string]prometheus.Counter)
	for _, e := range tunnel.QUICSendErrnos() {
		counters[e] = m.quicSendErrors.WithLabelValues(e)
	}
	return func(errno string) {
		if c, ok := counters[errno]; ok {
			c.Inc()
		}
	}
}

// labels appends the key label's value to lv when the key label is on.
func (m *metrics) labels(ss *session, lv ...string) []string {
	if m.keyLabel {
		fp := ""
		if ss.ident != nil {
			fp = ss.ident.Fingerprint
		}
		return append(lv, fp)
	}
	return lv
}

// MetricsHandler serves /metrics, /healthz and /readyz. Run serves it on
// the metrics: address; a program that embeds the gateway may serve it
// elsewhere.
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", s.handleHealthz)
	mux.HandleFunc("/readyz", s.handleReadyz)
	return mux
}
