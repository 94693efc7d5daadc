package server

// Reload. SIGHUP re-reads server.yaml and authorized_keys together: both
// are parsed and checked, every target is built (TLS CA and password files
// read), and only then is everything swapped in, back to back under the
// reload lock; on any error nothing changes. The running state is a set of
// atomic pointers (targets, keys, config), each to a value that is never
// modified after it is stored, so a session reads a consistent target set
// without locks.
//
// What a reload does to what runs:
//   - a target that is new is served at once;
//   - a target that is gone, or whose settings changed (a changed target is
//     a new *target under the old name), is retired: its discovery loop
//     stops, its streams are cut, and sessions whose control stream named
//     it either move to the new target of that name (a topology push) or,
//     when the name is gone, end with a reason;
//   - every live session is judged again against the new keys (revoke.go);
//   - limits apply to what starts after the swap, except those built into
//     the listeners and admission tables at start (handshake_timeout,
//     max_streams_per_session, auth_failures_per_minute,
//     unauthenticated_per_source, max_unauthenticated);
//   - those, listen addresses, host key and certificate and the metrics
//     listener need a restart, which the log says; the running values stay.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sync"

	"github.com/cachetun/cachetun/auth"
)

// targetSet is an immutable snapshot of the configured targets.
type targetSet struct {
	byName map[string]*target
	names  []string // sorted
}

func (ts *targetSet) get(name string) *target { return ts.byName[name] }

// newTargetSet builds a set from targets already made.
func newTargetSet(ts map[string]*target) *targetSet {
	set := &targetSet{byName: ts}
	for name := range ts {
		set.names = append(set.names, name)
	}
	slices.Sort(set.names)
	return set
}

// targets returns the current target set.
func (s *Server) targets() *targetSet { return s.tset.Load() }

// target returns the current target of that name, or nil.
func (s *Server) target(name string) *target { return s.tset.Load().get(name) }

// config returns the running configuration. Its listen, host key and
// metrics fields are those the server started with.
func (s *Server) config() *Config { return s.conf.Load() }

// buildTarget makes a target of tc, reading its CA and password files.
func buildTarget(name string, tc *Target) (*target, error) {
	t := newTarget(name, tc)
	if tc.TLS != nil {
		var err error
		if t.upstreamTLS, err = upstreamTLSConfig(tc.TLS); err != nil {
			return nil, fmt.Errorf("target %q: %w", name, err)
		}
		if tc.TLS.CAFile != "" {
			t.caPEM, _ = os.ReadFile(tc.TLS.CAFile) // read by upstreamTLSConfig just now
		}
	}
	if tc.Auth != nil {
		var err error
		if t.password, err = readSecret(tc.Auth.PasswordFile); err != nil {
			return nil, fmt.Errorf("target %q: %w", name, err)
		}
	}
	return t, nil
}

// buildTargets makes every target of cfg; a target of old that is the
// same in every respect (settings, CA and password files) is kept, so its
// streams, sessions and discovered topology go on.
func buildTargets(cfg *Config, old *targetSet) (*targetSet, error) {
	m := make(map[string]*target, len(cfg.Targets))
	for _, name := range cfg.TargetNames() {
		nt, err := buildTarget(name, cfg.Targets[name])
		if err != nil {
			return nil, err
		}
		if old != nil {
			switch ot := old.get(name); {
			case ot != nil && sameTarget(ot, nt):
				clear(nt.password)
				nt = ot
			case ot != nil: // versions go on rising for the clients
				v := ot.Info().Version
				nt.mu.Lock()
				nt.info.Version += v
				nt.mu.Unlock()
			}
		}
		m[name] = nt
	}
	return newTargetSet(m), nil
}

// sameTarget reports whether b would serve exactly as a does.
func sameTarget(a, b *target) bool {
	return reflect.DeepEqual(a.cfg, b.cfg) && bytes.Equal(a.password, b.password) && bytes.Equal(a.caPEM, b.caPEM)
}

// reloadState serialises reloads.
type reloadState struct {
	mu          sync.Mutex
	hostKeyHash [32]byte // of the host key file at start
	hostCert    []byte   // the host certificate file at start

	sigMu sync.Mutex    // guards sig
	sig   chan struct{} // closed and replaced at every swap
}

// reloaded returns a channel closed at the next successful reload.
func (s *Server) reloaded() <-chan struct{} {
	r := &s.reload
	r.sigMu.Lock()
	defer r.sigMu.Unlock()
	if r.sig == nil {
		r.sig = make(chan struct{})
	}
	return r.sig
}

func (s *Server) signalReloaded() {
	r := &s.reload
	r.sigMu.Lock()
	defer r.sigMu.Unlock()
	if r.sig != nil {
		close(r.sig)
	}
	r.sig = make(chan struct{})
}

func fileHash(path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
}

// Reload re-reads the configuration file at path and the authorized_keys
// file it names, and swaps both in together; see the top of this file. On
// an error the running configuration stays, the error (which names the
// file, and the line where it knows it) is logged at ERROR and returned.
func (s *Server) Reload(path string) error {
	s.reload.mu.Lock()
	defer s.reload.mu.Unlock()
	fail := func(err error) error {
		s.metrics.reloads.WithLabelValues("error").Inc()
		s.log.Error("reload failed: keeping the running configuration", keyErr, err)
		return err
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		return fail(err)
	}
	ak, err := auth.LoadAuthorizedKeys(cfg.AuthorizedKeys)
	if err != nil {
		return fail(fmt.Errorf("load authorized_keys: %w", err))
	}
	oldSet, oldCfg := s.targets(), s.config()
	set, err := buildTargets(cfg, oldSet)
	if err != nil {
		return fail(&ConfigError{File: path, Err: err})
	}
	s.keepRestartFields(oldCfg, cfg, path)
	logConfigWarnings(s.log, cfg)
	logUnknownTargets(s.log, cfg, ak)
	logKeyOptionWarnings(s.log, cfg, ak)

	// The swap: three stores, targets first, so that a key the new file
	// allows for a new target never meets the old target set, and a
	// removed target is refused before its key lines go.
	s.tset.Store(set)
	s.keys.Store(ak)
	s.conf.Store(cfg)

	var added, changed, removed []string
	for _, name := range set.names {
		switch ot := oldSet.get(name); {
		case ot == nil:
			added = append(added, name)
		case ot != set.get(name):
			changed = append(changed, name)
		}
	}
	for _, name := range oldSet.names {
		if set.get(name) == nil {
			removed = append(removed, name)
		}
	}
	for _, name := range oldSet.names {
		if ot := oldSet.get(name); set.get(name) != ot {
			ot.retire() // streams cut, control loops move on or end
		}
	}
	s.syncDiscovery()
	s.ready.invalidate()
	s.signalReloaded() // --all sessions take new targets
	s.rejudgeAll()
	s.resume.judgeHeld(ak, s.log)
	s.metrics.reloads.WithLabelValues("ok").Inc()
	for _, name := range added {
		s.log.Info("reload: target added", keyTarget, name, "type", set.get(name).cfg.Type)
	}
	for _, name := range changed {
		s.log.Info("reload: target changed: its open streams are closed, its sessions get the new topology", keyTarget, name)
	}
	for _, name := range removed {
		s.log.Info("reload: target removed: its streams and sessions are closed", keyTarget, name)
	}
	s.log.Info("reloaded server.yaml and authorized_keys", "config", path, "authorized_keys", cfg.AuthorizedKeys,
		"targets", len(set.names), "added", len(added), "changed", len(changed), "removed", len(removed))
	return nil
}

// keepRestartFields copies into cfg what only a restart can change, from
// the running configuration, and warns about each such field that the
// file changed.
func (s *Server) keepRestartFields(old, cfg *Config, path string) {
	warn := func(field string, was, now any) {
		s.log.Warn("reload: "+field+" changed: restart the gateway to apply it (systemctl restart cachetun); the running value stays",
			"config", path, "field", field, "running", was, "file", now)
	}
	if old.Listen.QUIC != cfg.Listen.QUIC {
		warn("listen.quic", old.Listen.QUIC, cfg.Listen.QUIC)
	}
	if old.Listen.TLS != cfg.Listen.TLS {
		warn("listen.tls", old.Listen.TLS, cfg.Listen.TLS)
	}
	if old.Listen.SSH != cfg.Listen.SSH {
		warn("listen.ssh", old.Listen.SSH, cfg.Listen.SSH)
	}
	if old.HostKey != cfg.HostKey || fileHash(cfg.HostKey) != s.reload.hostKeyHash {
		warn("host_key", old.HostKey, cfg.HostKey)
	}
	if old.HostCert != cfg.HostCert || (cfg.HostCert != "" && !bytes.Equal(readOrNil(cfg.HostCert), s.reload.hostCert)) {
		warn("host_cert", old.HostCert, cfg.HostCert)
	}
	if old.Metrics != cfg.Metrics {
		warn("metrics", old.Metrics, cfg.Metrics)
	}
	if old.MetricsKeyLabel != cfg.MetricsKeyLabel {
		warn("metrics_key_label", old.MetricsKeyLabel, cfg.MetricsKeyLabel)
	}
	if old.LogFormat != cfg.LogFormat {
		warn("log_format", old.LogFormat, cfg.LogFormat)
	}
	// Limits built into the listeners and the admission tables at start.
	ol, nl := &old.Limits, &cfg.Limits
	for _, f := range []struct {
		name     string
		was, now any
		keep     func()
	}{
		{"limits.handshake_timeout", ol.HandshakeTimeout, nl.HandshakeTimeout, func() { nl.HandshakeTimeout = ol.HandshakeTimeout }},
		{"limits.max_streams_per_session", ol.MaxStreamsPerSession, nl.MaxStreamsPerSession, func() { nl.MaxStreamsPerSession = ol.MaxStreamsPerSession }},
		{"limits.auth_failures_per_minute", ol.AuthFailuresPerMinute, nl.AuthFailuresPerMinute, func() { nl.AuthFailuresPerMinute = ol.AuthFailuresPerMinute }},
		{"limits.unauthenticated_per_source", ol.UnauthenticatedPerSource, nl.UnauthenticatedPerSource, func() { nl.UnauthenticatedPerSource = ol.UnauthenticatedPerSource }},
		{"limits.max_unauthenticated", ol.MaxUnauthenticated, nl.MaxUnauthenticated, func() { nl.MaxUnauthenticated = ol.MaxUnauthenticated }},
		{"limits.resume_memory", ol.ResumeMemory, nl.ResumeMemory, func() { nl.ResumeMemory = ol.ResumeMemory }},
		{"limits.resume_memory_per_key", ol.ResumeMemoryPerKey, nl.ResumeMemoryPerKey, func() { nl.ResumeMemoryPerKey = ol.ResumeMemoryPerKey }},
	} {
		if f.was != f.now {
			warn(f.name, f.was, f.now)
			f.keep()
		}
	}
	cfg.Listen, cfg.HostKey, cfg.HostCert = old.Listen, old.HostKey, old.HostCert
	cfg.Metrics, cfg.MetricsKeyLabel, cfg.LogFormat = old.Metrics, old.MetricsKeyLabel, old.LogFormat
	cfg.Version = old.Version // the build's, not the file's
}

func readOrNil(path string) []byte {
	b, _ := os.ReadFile(path)
	return b
}
