package server

import (
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
	cp.Targets = make(map[string]*Target, len(c.Targets))
	for n, t := range c.Targets {
		tc := *t
		tc.Nodes = append([]string(nil), t.Nodes...)
		tc.Networks = append([]string(nil), t.Networks...)
		cp.Targets[n] = &tc
	}
	return &cp
}
