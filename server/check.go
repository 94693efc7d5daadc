package server

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/certs"
	"github.com/cachetun/cachetun/internal/yamlx"
)

// Severity says whether a Problem stops the gateway (SeverityError) or is
// only worth a look (SeverityWarning).
type Severity int

// Severities of a Problem.
const (
	SeverityWarning Severity = iota
	SeverityError
)

func (s Severity) String() string {
	if s == SeverityError {
		return "error"
	}
	return "warning"
}

// Problem is one finding of Check: the file, its line where known (0
// otherwise) and what is wrong with the fix.
type Problem struct {
	Severity Severity
	File     string
	Line     int
	Msg      string
}

// String formats p as compilers do: "file:line: error: message".
func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return loc + ": " + p.Severity.String() + ": " + p.Msg
}

// CertWarnBefore is how long before it expires a certificate or an
// authorized_keys expiry-time is reported.
const CertWarnBefore = 7 * 24 * time.Hour

// Check validates the configuration file at path and the files it names,
// as `sshd -t` does, and reports every problem it finds rather than the
// first: unknown keys and bad values in server.yaml (with their lines), a
// host key or password file that is missing, unreadable or readable by
// others, a host certificate that has expired or expires within
// CertWarnBefore, authorized_keys lines that do not parse (unknown options
// included) or name targets that are not configured, and the settings the
// gateway warns about when it starts (insecure_skip_verify, a metrics
// listener beyond loopback). It reads files and nothing else: no listener,
// no connection. The gateway would refuse to start exactly when a problem
// of SeverityError is reported, except for unknown targets in targets=,
// which the running gateway only logs.
func Check(path string, now time.Time) []Problem {
	var ps []Problem
	add := func(sev Severity, file string, line int, format string, args ...any) {
		ps = append(ps, Problem{Severity: sev, File: file, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	data, err := os.ReadFile(path)
	if err != nil {
		add(SeverityError, path, 0, "read config: %v: run 'cachetun server init' or pass --config", err)
		return ps
	}
	unknown, lines, err := yamlx.Walk(data, Config{})
	if err != nil {
		add(SeverityError, path, 0, "%v", err)
		return ps
	}
	for _, u := range unknown {
		add(SeverityError, path, u.Line, "%s: remove it or fix its spelling (README.md, \"Server on EC2\", lists the keys)", u.Msg)
	}
	cfg := DefaultConfig()
	if err := yaml.Unmarshal(data, cfg); err != nil {
		add(SeverityError, path, 0, "%v", err)
		return ps
	}
	if err := cfg.Validate(); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			add(SeverityError, path, lineOf(lines, ce.Field), "%s: %v", ce.Field, ce.Err)
		} else {
			add(SeverityError, path, 0, "%v", err)
		}
	}
	for _, w := range configWarnings(cfg) {
		add(SeverityWarning, path, lines[w.field], "%s", w.msg)
	}
	if cfg.Metrics != "" {
		if _, _, err := net.SplitHostPort(cfg.Metrics); err != nil {
			add(SeverityError, path, lines["metrics"], "metrics: %q is not host:port (e.g. \"127.0.0.1:9464\")", cfg.Metrics)
		}
	}

	if cfg.HostKey != "" {
		if _, err := auth.LoadSigner(cfg.HostKey); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				add(SeverityError, path, lines["host_key"], "host_key %q does not exist: run 'cachetun server init --dir %s' or fix the path", cfg.HostKey, dirOf(cfg.HostKey))
			} else {
				add(SeverityError, cfg.HostKey, 0, "host key: %v", err)
			}
		} else if _, signer, err := certs.LoadHostKey(cfg.HostKey); err != nil {
			add(SeverityError, cfg.HostKey, 0, "%v", err)
		} else if cfg.HostCert != "" {
			ps = append(ps, checkHostCert(cfg.HostCert, signer.PublicKey(), now)...)
		}
	}

	if cfg.AuthorizedKeys != "" {
		ps = append(ps, checkAuthorizedKeys(cfg, path, lines["authorized_keys"], now)...)
	}

	for _, name := range cfg.TargetNames() {
		t := cfg.Targets[name]
		if t == nil {
			continue
		}
		field := "targets." + name
		if t.TLS != nil {
			if _, err := upstreamTLSConfig(t.TLS); err != nil {
				add(SeverityError, path, lines[field+".tls.ca_file"], "%s.tls: %v", field, err)
			}
		}
		if t.Auth != nil && t.Auth.PasswordFile != "" {
			if _, err := readSecret(t.Auth.PasswordFile); err != nil {
				add(SeverityError, path, lines[field+".auth.password_file"], "%s.auth: %v", field, err)
			}
		}
	}
	return ps
}

// lineOf returns the line of field, or of the nearest enclosing field
// that the file has (a missing "targets.r.nodes" is reported on
// "targets.r").
func lineOf(lines map[string]int, field string) int {
	for field != "" {
		if n, ok := lines[field]; ok {
			return n
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			break
		}
		field = field[:i]
	}
	return 0
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return "."
}

// checkHostCert checks host_cert as New loads it, and its validity at now.
func checkHostCert(path string, hostKey ssh.PublicKey, now time.Time) []Problem {
	p := func(sev Severity, format string, args ...any) []Problem {
		return []Problem{{Severity: sev, File: path, Msg: fmt.Sprintf(format, args...)}}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return p(SeverityError, "read host_cert: %v", err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return p(SeverityError, "parse host_cert: %v", err)
	}
	c, ok := pk.(*ssh.Certificate)
	if !ok || c.CertType != ssh.HostCert {
		return p(SeverityError, "not an OpenSSH host certificate: sign the host key with ssh-keygen -s CA -h")
	}
	if string(c.Key.Marshal()) != string(hostKey.Marshal()) {
		return p(SeverityError, "certifies another key than host_key: sign the host key's .pub file")
	}
	if c.ValidBefore != ssh.CertTimeInfinity {
		until := time.Unix(int64(c.ValidBefore), 0).UTC()
		switch left := until.Sub(now); {
		case left <= 0:
			return p(SeverityError, "host certificate expired on %s: clients that trust the host CA refuse this gateway; sign the host key again", until.Format(time.RFC3339))
		case left < CertWarnBefore:
			return p(SeverityWarning, "host certificate expires on %s (in %s): sign the host key again before then", until.Format(time.RFC3339), left.Round(time.Minute))
		}
	}
	if from := time.Unix(int64(c.ValidAfter), 0).UTC(); from.After(now) {
		return p(SeverityWarning, "host certificate is not valid before %s: check the clock, or the -V of ssh-keygen", from.Format(time.RFC3339))
	}
	return nil
}

// checkAuthorizedKeys checks the permissions and every line of
// authorized_keys; cfgLine is the line of authorized_keys: in the config.
func checkAuthorizedKeys(cfg *Config, cfgPath string, cfgLine int, now time.Time) []Problem {
	path := cfg.AuthorizedKeys
	var ps []Problem
	add := func(sev Severity, line int, format string, args ...any) {
		ps = append(ps, Problem{Severity: sev, File: path, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	_, err := auth.LoadAuthorizedKeys(path)
	var pe *auth.PermissionError
	switch {
	case err == nil, errors.Is(err, auth.ErrSyntax):
	case errors.As(err, &pe):
		add(SeverityError, 0, "%v", err)
	case errors.Is(err, fs.ErrNotExist):
		return []Problem{{Severity: SeverityError, File: cfgPath, Line: cfgLine,
			Msg: fmt.Sprintf("authorized_keys %q does not exist: create it (one OpenSSH public key per line) or fix the path", path)}}
	default:
		add(SeverityError, 0, "%v", err)
		return ps
	}
	data, err := os.ReadFile(path)
	if err != nil {
		add(SeverityError, 0, "%v", err)
		return ps
	}
	ak, perrs := auth.CheckAuthorizedKeys(data, path)
	for _, e := range perrs {
		add(SeverityError, e.Line, "%v", e.Err)
	}
	for _, u := range unknownTargets(cfg, ak) {
		add(SeverityError, u.line, "%s", u.msg)
	}
	for _, e := range ak.Entries() {
		if e.Expires.IsZero() {
			continue
		}
		switch left := e.Expires.Sub(now); {
		case left <= 0:
			add(SeverityWarning, e.Line, "expiry-time %s has passed: key %s is refused; remove the line", e.Expires.Format(time.RFC3339), e.Fingerprint)
		case left < CertWarnBefore:
			add(SeverityWarning, e.Line, "key %s expires on %s (in %s)", e.Fingerprint, e.Expires.Format(time.RFC3339), left.Round(time.Minute))
		}
	}
	for _, w := range keyOptionWarnings(cfg, ak) {
		add(SeverityWarning, w.line, "%s", w.msg)
	}
	if ak.Len() == 0 && len(perrs) == 0 {
		add(SeverityWarning, 0, "no keys: no client can log in; add one OpenSSH public key per line")
	}
	return ps
}

type lineMsg struct {
	line   int
	target string
	msg    string
}

// unknownTargets finds targets= names that are not configured: such a name
// grants nothing, so it is a typo (targets="prod-redsi") or a target that
// was removed.
func unknownTargets(cfg *Config, ak *auth.AuthorizedKeys) []lineMsg {
	var out []lineMsg
	for _, e := range ak.Entries() {
		for _, t := range e.Targets {
			if _, ok := cfg.Targets[t]; ok {
				continue
			}
			out = append(out, lineMsg{line: e.Line, target: t, msg: fmt.Sprintf("targets= names %q, which is not a target of this gateway (targets: %s): fix the name, or add the target to the config", t, strings.Join(cfg.TargetNames(), ", "))})
		}
	}
	return out
}

type fieldMsg struct {
	field string
	msg   string
}

// configWarnings are the settings that work but weaken the gateway; New
// logs them at start and Check reports them.
func configWarnings(cfg *Config) []fieldMsg {
	var out []fieldMsg
	for _, name := range cfg.TargetNames() {
		t := cfg.Targets[name]
		if t != nil && t.TLS != nil && t.TLS.InsecureSkipVerify {
			out = append(out, fieldMsg{field: "targets." + name + ".tls.insecure_skip_verify",
				msg: fmt.Sprintf("targets.%s.tls.insecure_skip_verify is true: the gateway does not verify the cache's certificate, so whoever sits between gateway and cache can read and change the traffic and the AUTH password; set ca_file and server_name instead", name)})
		}
	}
	if cfg.Metrics != "" && !isLoopback(cfg.Metrics) {
		out = append(out, fieldMsg{field: "metrics",
			msg: fmt.Sprintf("metrics %q is not a loopback address: /metrics answers anyone who reaches the port, without authentication; listen on 127.0.0.1 and scrape through a local agent, or allow only the scraper in the security group", cfg.Metrics)})
	}
	return out
}

// isLoopback reports whether a host:port listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// logConfigWarnings writes configWarnings as WARN lines.
func logConfigWarnings(log *slog.Logger, cfg *Config) {
	for _, w := range configWarnings(cfg) {
		log.Warn("config warning", "field", w.field, "warning", w.msg)
	}
}

// keyOptionWarnings finds lines whose options refuse their key (restrict,
// no-port-forwarding: cachetun only forwards ports) and permitopen=
// entries that name no configured target and no configured node, which
// permit nothing unless a discovered node has that name.
func keyOptionWarnings(cfg *Config, ak *auth.AuthorizedKeys) []lineMsg {
	seeds := map[string]bool{}
	for _, t := range cfg.Targets {
		if t == nil {
			continue
		}
		for _, n := range t.Nodes {
			if h, _, err := net.SplitHostPort(n); err == nil {
				seeds[strings.ToLower(h)] = true
			}
		}
	}
	var out []lineMsg
	for _, e := range ak.Entries() {
		if e.Restricted != "" {
			what := "key " + e.Fingerprint
			if e.CertAuthority {
				what = "every certificate of CA " + e.Fingerprint
			}
			out = append(out, lineMsg{line: e.Line, msg: fmt.Sprintf("%s is refused: %s on this line takes port forwarding away, and cachetun only forwards ports; write port-forwarding after it to let the key in, or remove the line", what, e.Restricted)})
		}
		for _, p := range e.PermitOpen {
			if permitNamesSomething(cfg, seeds, p.Host) {
				continue
			}
			out = append(out, lineMsg{line: e.Line, target: p.Host, msg: fmt.Sprintf("permitopen= entry %q names no target, N.TARGET or configured node of this gateway (targets: %s): it permits only a discovered node of that name", p.String(), strings.Join(cfg.TargetNames(), ", "))})
		}
	}
	return out
}

func permitNamesSomething(cfg *Config, seeds map[string]bool, host string) bool {
	if host == "*" || seeds[strings.ToLower(host)] {
		return true
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	if _, ok := cfg.Targets[host]; ok {
		return true
	}
	n, t, ok := strings.Cut(host, ".")
	if _, isTarget := cfg.Targets[t]; ok && isTarget && n != "" && strings.Trim(n, "0123456789") == "" {
		return true
	}
	return false
}

// logKeyOptionWarnings writes keyOptionWarnings as WARN lines.
func logKeyOptionWarnings(log *slog.Logger, cfg *Config, ak *auth.AuthorizedKeys) {
	for _, w := range keyOptionWarnings(cfg, ak) {
		log.Warn("authorized_keys option warning", "file", ak.Name(), "line", w.line, "warning", w.msg)
	}
}

// logUnknownTargets writes a WARN line per targets= name in ak that is
// not configured.
func logUnknownTargets(log *slog.Logger, cfg *Config, ak *auth.AuthorizedKeys) {
	for _, u := range unknownTargets(cfg, ak) {
		log.Warn("authorized_keys names a target that is not configured", "file", ak.Name(), "line", u.line, keyTarget, u.target, "warning", u.msg)
	}
}
