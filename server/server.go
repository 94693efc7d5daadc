package server

import (
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/tunnel"
)

// Log attribute keys.
const (
	keySession   = "session"
	keyTransport = "transport"
	keyRemote    = "remote"
	keyKeyFP     = "key_fp"
	keyComment   = "key_comment"
	keyCertSer   = "cert_serial"
	keyCertCA    = "cert_ca"
	keyTarget    = "target"
	keyNode      = "node"
	keyResult    = "result"
	keyReason    = "reason"
	keyDuration  = "duration" // a time.Duration: the JSON log writes it as duration_ms
	keyErr       = "err"
)

// identAttrs are the log attributes of an authenticated client: the key's
// fingerprint and its authorized_keys comment (or certificate key id) as
// separate fields, and for certificates the serial and the CA.
func identAttrs(id *auth.Identity) []any {
	if id == nil {
		return nil
	}
	attrs := []any{keyKeyFP, id.Fingerprint, keyComment, id.Comment}
	if id.Cert != nil {
		attrs = append(attrs, keyCertSer, id.Cert.Serial, keyCertCA, auth.Fingerprint(id.Cert.SignatureKey))
	}
	return attrs
}

// Server is the gateway. New loads keys and targets; Run listens and
// serves until its context ends, then drains (run.go).
type Server struct {
	log        *slog.Logger
	version    string // Config.Version at New
	hostKey    crypto.Signer
	hostSigner ssh.Signer
	hostCert   *ssh.Certificate
	metrics    *metrics

	// The running configuration, keys and targets: each pointer is to a
	// value never changed once stored; Reload swaps them (reload.go).
	conf   atomic.Pointer[Config]
	tset   atomic.Pointer[targetSet]
	reload reloadState

	keys atomic.Pointer[auth.AuthorizedKeys]
	live atomic.Int64 // sessions being served, authenticated or not

	// draining is closed, under mu, when the server stops taking new
	// work (Drain or Close); no session goroutine is added to wg after.
	draining chan struct{}
	drainOne sync.Once

	mu        sync.Mutex // guards the following
	sessions  map[*session]struct{}
	listeners map[tunnel.Listener]struct{}
	perKey    map[string]int

	streams streamGauge  // open streams of every session
	resume  *resumeTable // resumable streams, attached or held
	life    lifecycle    // Run, Drain and Close (run.go)

	adm   *admission    // unauthenticated connections per source
	fails *failureTable // failed authentications per source
	// refusedLog throttles the log lines of refused admissions to one a
	// second: a flood must not flood the log too.
	refusedLog atomic.Int64

	wg sync.WaitGroup // every session goroutine

	disc  discovery // topology discovery loops, run while Run runs
	ready readiness // cached node checks of /readyz
}

// New loads the host key, authorized_keys and targets of cfg. It does not
// listen: Run does. cfg is the server's from then on (Reload replaces it).
func New(cfg *Config, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if _, err := auth.LoadSigner(cfg.HostKey); err != nil { // permission check
		return nil, fmt.Errorf("load host key: %w", err)
	}
	key, signer, err := certs.LoadHostKey(cfg.HostKey)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:        log.With("component", "server"),
		version:    cmp.Or(cfg.Version, "dev"),
		hostKey:    key,
		hostSigner: signer,
		draining:   make(chan struct{}),
		life:       newLifecycle(),
		sessions:   make(map[*session]struct{}),
		listeners:  make(map[tunnel.Listener]struct{}),
		perKey:     make(map[string]int),
		adm:        newAdmission(cfg.Limits.UnauthenticatedPerSource, cfg.Limits.MaxUnauthenticated),
		fails:      newFailureTable(cfg.Limits.AuthFailuresPerMinute),
		metrics:    newMetrics(cfg.MetricsKeyLabel, cmp.Or(cfg.Version, "dev")),
		resume:     newResumeTable(cfg.Limits),
	}
	logConfigWarnings(s.log, cfg)
	if cfg.HostCert != "" {
		b, err := os.ReadFile(cfg.HostCert)
		if err != nil {
			return nil, fmt.Errorf("read host_cert: %w", err)
		}
		pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, fmt.Errorf("parse host_cert %q: %w", cfg.HostCert, err)
		}
		c, ok := pk.(*ssh.Certificate)
		if !ok || c.CertType != ssh.HostCert {
			return nil, fmt.Errorf("host_cert %q is not an OpenSSH host certificate", cfg.HostCert)
		}
		if string(c.Key.Marshal()) != string(signer.PublicKey().Marshal()) {
			return nil, fmt.Errorf("host_cert %q certifies another key than host_key %q", cfg.HostCert, cfg.HostKey)
		}
		s.hostCert = c
	}
	s.conf.Store(cfg)
	s.reload.hostKeyHash = fileHash(cfg.HostKey)
	if cfg.HostCert != "" {
		s.reload.hostCert = readOrNil(cfg.HostCert)
	}
	s.metrics.reg.MustRegister(newHealthCollector(s))
	set, err := buildTargets(cfg, nil)
	if err != nil {
		return nil, err
	}
	s.tset.Store(set)
	if err := s.ReloadKeys(); err != nil {
		return nil, err
	}
	return s, nil
}

// HostPublicKey returns the gateway's SSH host key.
func (s *Server) HostPublicKey() ssh.PublicKey { return s.hostSigner.PublicKey() }

// ReloadKeys re-reads authorized_keys. New sessions use the new file, and
// every live session is judged again against it (revoke.go): a key that
// is gone or no longer allowed ends its session, a narrowed targets= cuts
// the streams of the targets taken away. On an error the old file stays
// in force.
func (s *Server) ReloadKeys() error {
	ak, err := auth.LoadAuthorizedKeys(s.config().AuthorizedKeys)
	if err != nil {
		return fmt.Errorf("load authorized_keys: %w", err)
	}
	logUnknownTargets(s.log, s.config(), ak)
	logKeyOptionWarnings(s.log, s.config(), ak)
	s.keys.Store(ak)
	s.rejudgeAll()
	s.resume.judgeHeld(ak, s.log)
	return nil
}

// statelessResetKey derives a stable key from the host key, so that a
// restarted gateway resets its old connections at once.
func (s *Server) statelessResetKey() *[32]byte {
	der, err := x509.MarshalPKCS8PrivateKey(s.hostKey)
	if err != nil {
		return nil
	}
	h := sha256.New()
	h.Write([]byte("cachetun stateless reset key v1\x00"))
	h.Write(der)
	clear(der)
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return &k
}

// admit applies the global session limit.
// Sessions still authenticating count too, so unauthenticated clients
// cannot pile up.
func (s *Server) admit(sess tunnel.Session) bool {
	if s.live.Load() >= int64(s.config().Limits.MaxSessions) {
		s.log.Warn("session refused: max_sessions reached", keyRemote, sess.RemoteAddr().String(), "max_sessions", s.config().Limits.MaxSessions)
		sess.Close()
		return false
	}
	return true
}

// authFailed counts a failed authentication from ip: a refused key, a
// failed handshake, a timeout or an end of connection before
// authentication.
func (s *Server) authFailed(ip net.IP) {
	if !s.fails.add(sourceOf(ip)) {
		s.metrics.authFailures.WithLabelValues("untracked").Inc()
	}
}

// rateLimited reports whether ip is over its failed-authentication budget
// and, if so, what to tell the client.
func (s *Server) rateLimited(ip net.IP) (bool, string) {
	src := sourceOf(ip)
	limited, retry := s.fails.limited(src)
	if !limited {
		return false, ""
	}
	return true, rateLimitMessage(src, retry)
}

// transportAdmission is the tunnel.Admission of one transport's listener.
func (s *Server) transportAdmission(transport string) tunnel.Admission {
	return &serverAdmission{s: s, transport: transport}
}

type serverAdmission struct {
	s         *Server
	transport string
}

func (a *serverAdmission) Admit(remote net.Addr, verified bool) (func(error), error) {
	ip := remoteIP(remote)
	src := sourceOf(ip)
	release, err := a.s.adm.acquire(src)
	if err != nil {
		a.s.admissionRefused(a.transport, remote, src, err)
		return nil, err
	}
	return func(err error) {
		release()
		// A QUIC source not proven by a Retry may be spoofed: its
		// failures are not held against the address it claims.
		if err != nil && verified && !errors.Is(err, net.ErrClosed) && !errors.Is(err, context.Canceled) {
			a.s.authFailed(ip)
			a.s.metrics.authFailures.WithLabelValues("handshake").Inc()
		}
	}, nil
}

func (a *serverAdmission) RequireRetry(remote net.Addr) bool {
	return a.s.adm.busy(sourceOf(remoteIP(remote)))
}

// admissionRefused counts and logs (at most once a second) a connection
// refused for holding too many unauthenticated slots.
func (s *Server) admissionRefused(transport string, remote net.Addr, src netip.Prefix, err error) {
	reason := "unauthenticated_per_source"
	if errors.Is(err, errGatewayBusy) {
		reason = "max_unauthenticated"
	}
	s.metrics.authFailures.WithLabelValues(reason).Inc()
	now := time.Now().UnixNano()
	last := s.refusedLog.Load()
	if now-last < int64(time.Second) || !s.refusedLog.CompareAndSwap(last, now) {
		return
	}
	mine, all := s.adm.inUse(src)
	s.log.Warn("connection refused before its handshake", keyTransport, transport, keyRemote, remote.String(),
		"source", sourceString(src), keyErr, err, "source_unauthenticated", mine, "unauthenticated", all)
}

func newSessionID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func remoteIP(a net.Addr) net.IP {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.IP
	case *net.TCPAddr:
		return a.IP
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return nil
	}
	return net.ParseIP(host)
}
