package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/internal/yamlx"
	"github.com/cachetun/cachetun/tunnel"
)

// Config is the gateway's configuration, /etc/cachetun/server.yaml.
type Config struct {
	Listen         Listen             `yaml:"listen"`
	HostKey        string             `yaml:"host_key"`
	HostCert       string             `yaml:"host_cert"` // optional OpenSSH host certificate
	AuthorizedKeys string             `yaml:"authorized_keys"`
	Targets        map[string]*Target `yaml:"targets"`
	Limits         Limits             `yaml:"limits"`
	// Metrics is the listen address of the Prometheus /metrics endpoint;
	// empty disables it.
	Metrics string `yaml:"metrics"`
	// MetricsKeyLabel adds the client key's fingerprint as a label to the
	// session, stream and byte series. Off by default: each key makes
	// series of its own, which a fleet of many keys pays for in memory.
	MetricsKeyLabel bool `yaml:"metrics_key_label"`
	// LogFormat is the log format, "text" or "json", where neither
	// --log-format nor CACHETUN_LOG_FORMAT names one; empty means text.
	LogFormat string `yaml:"log_format"`
	// Version is the build's version, which the gateway reports in an
	// accepting Welcome and in cachetun_build_info. It is not read from
	// the file: the program sets it (cmd/cachetun sets its -X main.version).
	Version string `yaml:"-"`
}

// Listen holds one address per transport; an empty string disables it.
type Listen struct {
	QUIC string `yaml:"quic"`
	TLS  string `yaml:"tls"`
	SSH  string `yaml:"ssh"`
}

// Limits bound what one client can make the gateway hold.
type Limits struct {
	HandshakeTimeout      time.Duration `yaml:"handshake_timeout"`
	AuthTimeout           time.Duration `yaml:"auth_timeout"`
	IdleTimeout           time.Duration `yaml:"idle_timeout"`
	DialTimeout           time.Duration `yaml:"dial_timeout"`
	DrainTimeout          time.Duration `yaml:"drain_timeout"`
	MaxStreamsPerSession  int           `yaml:"max_streams_per_session"`
	MaxSessionsPerKey     int           `yaml:"max_sessions_per_key"`
	MaxSessions           int           `yaml:"max_sessions"`
	AuthFailuresPerMinute int           `yaml:"auth_failures_per_minute"`
	// UnauthenticatedPerSource bounds the connections of one source (an
	// IPv4 address, an IPv6 /64) that are in their handshake or have not
	// yet sent a verified Hello; MaxUnauthenticated bounds them for the
	// whole gateway. Beyond either a connection is closed at once.
	UnauthenticatedPerSource int `yaml:"unauthenticated_per_source"`
	MaxUnauthenticated       int `yaml:"max_unauthenticated"`
	// ResumeGrace is how long a resumable stream is held, upstream
	// connection open, after its session died, for the client to resume
	// it on a new session; 0 turns resumption off (tunnel/PROTOCOL.md,
	// "Resumable streams"). ResumeBuffer bounds one stream's replay
	// buffer, ResumeMemoryPerKey and ResumeMemory those of all the streams
	// of a key and of the gateway (bytes).
	ResumeGrace        time.Duration `yaml:"resume_grace"`
	ResumeBuffer       int           `yaml:"resume_buffer"`
	ResumeMemoryPerKey int           `yaml:"resume_memory_per_key"`
	ResumeMemory       int           `yaml:"resume_memory"`
}

// Target types.
const (
	TypeRedis        = "redis"
	TypeRedisCluster = "redis-cluster"
	TypeMemcached    = "memcached"
	TypeTCP          = "tcp"
)

// Discovery modes of memcached targets.
const (
	DiscoveryNone        = "none"
	DiscoveryElastiCache = "elasticache"
)

// Target is one named cache (or TCP service) behind the gateway.
type Target struct {
	Type  string   `yaml:"type"`
	Nodes []string `yaml:"nodes"`
	// Refresh is how often cluster targets rediscover their topology.
	// 0 means DefaultRefresh.
	Refresh time.Duration `yaml:"refresh"`
	// Discovery turns on node discovery for memcached targets:
	// "elasticache" treats nodes as configuration endpoints that answer
	// "config get cluster" (ElastiCache auto discovery). redis-cluster
	// targets always discover their nodes.
	Discovery string `yaml:"discovery"`
	// Networks are the only networks (CIDR) where discovered nodes may
	// live; empty means the private ranges 10.0.0.0/8, 172.16.0.0/12,
	// 192.168.0.0/16, 100.64.0.0/10 and fc00::/7. Link-local, multicast,
	// broadcast, unspecified and cloud metadata addresses are never
	// admitted; loopback and the gateway's own addresses only when a
	// network here names them (127.0.0.1/32). Seeds in Nodes are trusted
	// as written.
	Networks []string      `yaml:"networks"`
	TLS      *UpstreamTLS  `yaml:"tls"`
	Auth     *UpstreamAuth `yaml:"auth"`
}

// refresh is how often t rediscovers its topology.
func (t *Target) refresh() time.Duration {
	if t.Refresh == 0 {
		return DefaultRefresh
	}
	return t.Refresh
}

// UpstreamTLS makes the gateway speak TLS to the cache nodes.
type UpstreamTLS struct {
	ServerName         string `yaml:"server_name"`
	CAFile             string `yaml:"ca_file"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// UpstreamAuth makes the gateway authenticate to Redis on the client's
// behalf; the secret never leaves the gateway.
type UpstreamAuth struct {
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// DefaultRefresh is how often a target that discovers its nodes does so
// when its refresh: is not set.
const DefaultRefresh = 30 * time.Second

// DefaultConfig returns the defaults that a config file is decoded over.
// A target's refresh: of 0 (unset) means DefaultRefresh (Target.refresh).
func DefaultConfig() *Config {
	return &Config{
		Version:        "dev",
		Listen:         Listen{QUIC: ":4433", TLS: ":4433", SSH: ":2222"},
		HostKey:        "/etc/cachetun/host_ed25519",
		AuthorizedKeys: "/etc/cachetun/authorized_keys",
		Limits: Limits{
			HandshakeTimeout:      10 * time.Second,
			AuthTimeout:           10 * time.Second,
			IdleTimeout:           30 * time.Minute,
			DialTimeout:           5 * time.Second,
			DrainTimeout:          30 * time.Second,
			MaxStreamsPerSession:  1024,
			MaxSessionsPerKey:     16,
			MaxSessions:           1024,
			AuthFailuresPerMinute: 30,
			// 8 covers a NAT of a few laptops reconnecting at once.
			UnauthenticatedPerSource: 8,
			MaxUnauthenticated:       128,
			ResumeGrace:              2 * time.Minute,
			ResumeBuffer:             tunnel.DefaultResumeBuffer,
			ResumeMemoryPerKey:       64 << 20,
			ResumeMemory:             512 << 20,
		},
	}
}

// ConfigError names the field of a configuration that is wrong.
type ConfigError struct {
	File  string
	Line  int // of Field in File; 0 when unknown
	Field string
	Err   error
}

func (e *ConfigError) Error() string {
	where := e.File
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Field == "" {
		return fmt.Sprintf("config %s: %v", where, e.Err)
	}
	return fmt.Sprintf("config %s: %s: %v", where, e.Field, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Hinted returns e as the error a person reads: a usage error whose fix
// is the operator's, in e.File.
func (e *ConfigError) Hinted() *control.Error {
	return &control.Error{Err: e, Hint: "fix " + e.File + " and run again", Fix: control.FixOperator, Usage: true}
}

// LoadConfig reads a YAML file over DefaultConfig and validates it. An
// error is a *control.Error (with the fix) around a *ConfigError.
// Unknown keys are errors, so a typo never passes silently.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, (&ConfigError{File: path, Err: err}).Hinted()
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			ce.File = path
			return nil, ce.Hinted()
		}
		return nil, (&ConfigError{File: path, Err: err}).Hinted()
	}
	return cfg, nil
}

// ParseConfig decodes YAML over DefaultConfig and validates the result.
func ParseConfig(data []byte) (*Config, error) {
	cfg := DefaultConfig()
	if err := yamlx.DecodeStrict(data, cfg); err != nil {
		return nil, &ConfigError{Err: err}
	}
	if err := cfg.Validate(); err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) && ce.Field != "" && ce.Line == 0 {
			if _, lines, err := yamlx.Walk(data, Config{}); err == nil {
				ce.Line = lines[ce.Field]
			}
		}
		return nil, err
	}
	return cfg, nil
}

// Validate checks every field and names the first bad one. It changes
// nothing: defaults come from decoding over DefaultConfig. Each section
// has its own check, in the order of the file.
func (c *Config) Validate() error {
	if err := c.Listen.validate(); err != nil {
		return err
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return badField("log_format", "%q is not one of text, json", c.LogFormat)
	}
	if c.HostKey == "" {
		return badField("host_key", "empty: run 'cachetun server init' to create one")
	}
	if c.AuthorizedKeys == "" {
		return badField("authorized_keys", "empty: name the OpenSSH authorized_keys file of the clients")
	}
	if len(c.Targets) == 0 {
		return badField("targets", "none configured: add at least one target with a type and nodes")
	}
	for _, name := range c.TargetNames() {
		if err := c.Targets[name].validate(name); err != nil {
			return err
		}
	}
	return c.Limits.validate()
}

// badField is the ConfigError for field, with the message format, args.
func badField(field string, format string, args ...any) error {
	return &ConfigError{Field: field, Err: fmt.Errorf(format, args...)}
}

// validate checks the listen section: at least one transport, each a
// host:port, and the two TCP transports on different ports.
func (l Listen) validate() error {
	if l.QUIC == "" && l.TLS == "" && l.SSH == "" {
		return badField("listen", "every transport is disabled: set at least one of quic, tls, ssh")
	}
	for name, addr := range map[string]string{"listen.quic": l.QUIC, "listen.tls": l.TLS, "listen.ssh": l.SSH} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return badField(name, "%q is not host:port (e.g. \":4433\")", addr)
		}
	}
	if l.TLS != "" && l.TLS == l.SSH {
		return badField("listen.ssh", "%q is also listen.tls: TCP transports need different ports", l.SSH)
	}
	return nil
}

// validate checks the target called name (t may be nil: an empty entry).
func (t *Target) validate(name string) error {
	field := "targets." + name
	if t == nil {
		return badField(field, "empty target")
	}
	if strings.ContainsAny(name, " \t,:/") || len(name) > 100 {
		return badField(field, "target names may not contain spaces, commas, colons or slashes")
	}
	switch t.Type {
	case TypeRedis, TypeRedisCluster, TypeMemcached, TypeTCP:
	case "":
		return badField(field+".type", "missing: one of redis, redis-cluster, memcached, tcp")
	default:
		return badField(field+".type", "%q is not one of redis, redis-cluster, memcached, tcp", t.Type)
	}
	if len(t.Nodes) == 0 {
		return badField(field+".nodes", "no nodes: list host:port addresses (seeds for cluster types)")
	}
	for i, n := range t.Nodes {
		if _, port, err := net.SplitHostPort(n); err != nil || port == "" {
			return badField(fmt.Sprintf("%s.nodes[%d]", field, i), "%q is not host:port", n)
		}
	}
	if t.Refresh < 0 {
		return badField(field+".refresh", "must be a positive duration such as \"30s\"")
	}
	if err := t.validateDiscovery(field); err != nil {
		return err
	}
	if t.Auth != nil && t.Type != TypeRedis && t.Type != TypeRedisCluster {
		return badField(field+".auth", "only redis and redis-cluster targets take auth")
	}
	if t.Auth != nil && t.Auth.PasswordFile == "" {
		return badField(field+".auth.password_file", "missing: name a file holding the password")
	}
	return nil
}

// validateDiscovery checks how the target at field finds its nodes:
// discovery, and the networks discovered nodes must be in.
func (t *Target) validateDiscovery(field string) error {
	switch t.Discovery {
	case "", DiscoveryNone:
	case DiscoveryElastiCache:
		if t.Type != TypeMemcached {
			return badField(field+".discovery", "%q works only for memcached targets (redis-cluster targets always discover)", t.Discovery)
		}
	default:
		return badField(field+".discovery", "%q is not one of none, elasticache", t.Discovery)
	}
	if len(t.Networks) > 0 && t.Type != TypeRedisCluster && t.Discovery != DiscoveryElastiCache {
		return badField(field+".networks", "only targets that discover their nodes (redis-cluster, memcached with discovery: elasticache) take networks")
	}
	for i, n := range t.Networks {
		if _, err := parseNetwork(n); err != nil {
			return badField(fmt.Sprintf("%s.networks[%d]", field, i), "%w", err)
		}
	}
	return nil
}

// validate checks the limits section: every timeout and count positive
// (idle_timeout may be 0: none).
func (l Limits) validate() error {
	for field, d := range map[string]time.Duration{
		"limits.handshake_timeout": l.HandshakeTimeout, "limits.auth_timeout": l.AuthTimeout,
		"limits.dial_timeout": l.DialTimeout, "limits.drain_timeout": l.DrainTimeout,
	} {
		if d <= 0 {
			return badField(field, "must be a positive duration such as \"10s\"")
		}
	}
	if l.IdleTimeout < 0 {
		return badField("limits.idle_timeout", "must be positive, or 0 for none")
	}
	if l.ResumeGrace < 0 {
		return badField("limits.resume_grace", "must be positive, or 0 to turn stream resumption off")
	}
	if l.ResumeBuffer < 64<<10 {
		return badField("limits.resume_buffer", "must be at least 65536 (bytes; default 4194304)")
	}
	if l.ResumeMemoryPerKey < l.ResumeBuffer || l.ResumeMemory < l.ResumeMemoryPerKey {
		return badField("limits.resume_memory_per_key", "must be at least limits.resume_buffer and at most limits.resume_memory")
	}
	for field, n := range map[string]int{
		"limits.max_streams_per_session": l.MaxStreamsPerSession, "limits.max_sessions_per_key": l.MaxSessionsPerKey,
		"limits.max_sessions": l.MaxSessions, "limits.auth_failures_per_minute": l.AuthFailuresPerMinute,
		"limits.unauthenticated_per_source": l.UnauthenticatedPerSource, "limits.max_unauthenticated": l.MaxUnauthenticated,
	} {
		if n <= 0 {
			return badField(field, "must be a positive number")
		}
	}
	return nil
}

// TargetNames returns the configured target names, sorted.
func (c *Config) TargetNames() []string {
	names := make([]string, 0, len(c.Targets))
	for n := range c.Targets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
