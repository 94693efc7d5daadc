package server

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

const pureConfig = `
host_key: /k
authorized_keys: /ak
targets:
  r: {type: redis, nodes: ["127.0.0.1:6379"]}
  c: {type: redis-cluster, nodes: ["127.0.0.1:7000"]}
  m: {type: memcached, discovery: elasticache, nodes: ["127.0.0.1:11211"], refresh: 5s}
`

// Validate reads the config and changes nothing: a config equal to a deep
// copy of itself before Validate is equal after it, and a target without
// refresh: keeps its zero, which means DefaultRefresh.
func TestConfig_ValidateChangesNothing(t *testing.T) {
	cfg, err := ParseConfig([]byte(pureConfig))
	if err != nil {
		t.Fatal(err)
	}
	before := deepCopyConfig(cfg)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, cfg) {
		t.Fatalf("Validate changed the config:\n got %+v\nwant %+v", cfg, before)
	}
	for name, want := range map[string]time.Duration{"r": DefaultRefresh, "c": DefaultRefresh, "m": 5 * time.Second} {
		tc := cfg.Targets[name]
		if got := tc.refresh(); got != want {
			t.Errorf("targets.%s refresh = %s, want %s", name, got, want)
		}
	}
	if cfg.Targets["c"].Refresh != 0 {
		t.Errorf("targets.c.refresh = %s after parse, want 0 (unset)", cfg.Targets["c"].Refresh)
	}
	if got, want := cfg.Version, DefaultConfig().Version; got != want {
		t.Errorf("Version = %q, want the default %q (the file cannot set it)", got, want)
	}
}

// A bad value is an error from Validate, and still changes nothing.
func TestConfig_ValidateBadChangesNothing(t *testing.T) {
	cfg, err := ParseConfig([]byte(pureConfig))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Targets["c"].Refresh = -time.Second
	before := deepCopyConfig(cfg)
	if err := cfg.Validate(); err == nil {
		t.Fatal("Validate accepted refresh: -1s")
	}
	if !reflect.DeepEqual(before, cfg) {
		t.Fatalf("Validate changed the config:\n got %+v\nwant %+v", cfg, before)
	}
}

func deepCopyConfig(c *Config) *Config {
	cp := *c
	if c.Targets == nil {
		return &cp
	}
	cp.Targets = make(map[string]*Target, len(c.Targets))
	for n, t := range c.Targets {
		if t == nil {
			cp.Targets[n] = nil
			continue
		}
		tc := *t
		tc.Nodes = append([]string(nil), t.Nodes...)
		tc.Networks = append([]string(nil), t.Networks...)
		cp.Targets[n] = &tc
	}
	return &cp
}

// Every check of Validate names the field that is wrong, one section at a
// time; the config is still left as it was.
func TestConfig_ValidateNamesTheField(t *testing.T) {
	cases := []struct {
		field string
		bad   func(c *Config)
	}{
		{"listen", func(c *Config) { c.Listen = Listen{} }},
		{"listen.quic", func(c *Config) { c.Listen.QUIC = "nope" }},
		{"listen.ssh", func(c *Config) { c.Listen.TLS, c.Listen.SSH = ":5000", ":5000" }},
		{"log_format", func(c *Config) { c.LogFormat = "xml" }},
		{"host_key", func(c *Config) { c.HostKey = "" }},
		{"authorized_keys", func(c *Config) { c.AuthorizedKeys = "" }},
		{"targets", func(c *Config) { c.Targets = nil }},
		{"targets.r", func(c *Config) { c.Targets["r"] = nil }},
		{"targets.a b", func(c *Config) { c.Targets["a b"] = c.Targets["r"] }},
		{"targets.r.type", func(c *Config) { c.Targets["r"].Type = "" }},
		{"targets.r.type", func(c *Config) { c.Targets["r"].Type = "mongo" }},
		{"targets.r.nodes", func(c *Config) { c.Targets["r"].Nodes = nil }},
		{"targets.r.nodes[0]", func(c *Config) { c.Targets["r"].Nodes = []string{"nope"} }},
		{"targets.r.refresh", func(c *Config) { c.Targets["r"].Refresh = -time.Second }},
		{"targets.r.discovery", func(c *Config) { c.Targets["r"].Discovery = DiscoveryElastiCache }},
		{"targets.m.discovery", func(c *Config) { c.Targets["m"].Discovery = "dns" }},
		{"targets.r.networks", func(c *Config) { c.Targets["r"].Networks = []string{"10.0.0.0/8"} }},
		{"targets.c.networks[0]", func(c *Config) { c.Targets["c"].Networks = []string{"nonsense"} }},
		{"targets.m.auth", func(c *Config) { c.Targets["m"].Auth = &UpstreamAuth{PasswordFile: "/p"} }},
		{"targets.r.auth.password_file", func(c *Config) { c.Targets["r"].Auth = &UpstreamAuth{} }},
		{"limits.dial_timeout", func(c *Config) { c.Limits.DialTimeout = 0 }},
		{"limits.idle_timeout", func(c *Config) { c.Limits.IdleTimeout = -time.Second }},
		{"limits.max_sessions", func(c *Config) { c.Limits.MaxSessions = 0 }},
		{"limits.resume_grace", func(c *Config) { c.Limits.ResumeGrace = -time.Second }},
		{"limits.resume_buffer", func(c *Config) { c.Limits.ResumeBuffer = 1000 }},
		{"limits.resume_memory_per_key", func(c *Config) { c.Limits.ResumeMemoryPerKey = c.Limits.ResumeMemory + 1 }},
	}
	for _, tc := range cases {
		cfg, err := ParseConfig([]byte(pureConfig))
		if err != nil {
			t.Fatal(err)
		}
		tc.bad(cfg)
		before := deepCopyConfig(cfg)
		err = cfg.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("want an error for %s, got %v (field %q)", tc.field, err, fieldOf(ce))
		}
		if !reflect.DeepEqual(before, cfg) {
			t.Errorf("%s: Validate changed the config", tc.field)
		}
	}
}

func fieldOf(ce *ConfigError) string {
	if ce == nil {
		return ""
	}
	return ce.Field
}
