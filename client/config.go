package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/internal/yamlx"
)

// Config is the client configuration, config.yaml in ConfigDir.
type Config struct {
	KnownHosts string              `yaml:"known_hosts"`
	Profiles   map[string]*Profile `yaml:"profiles"`

	// Found is false when the file did not exist (LoadConfig with
	// mustExist false): the configuration is empty.
	Found bool `yaml:"-"`
}

// Profile names a gateway and a target on it.
type Profile struct {
	// Server is one "host:port" or a list tried in order.
	Server    Servers `yaml:"server"`
	Target    string  `yaml:"target"`
	Transport string  `yaml:"transport"`
	Identity  string  `yaml:"identity"`
	LocalPort *int    `yaml:"local_port"`
	Bind      string  `yaml:"bind"`
	// DeadAfter is how long a stream may wait for an answer before the
	// session is probed (Options.DeadAfter); 0: the default, 2 s.
	DeadAfter time.Duration `yaml:"dead_after"`
}

// Servers decodes from a YAML string or list of strings.
type Servers []string

// UnmarshalYAML accepts "host:port" or ["a:1", "b:2"].
func (s *Servers) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*s = Servers{n.Value}
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		*s = l
		return nil
	}
	return fmt.Errorf("line %d: server must be \"host:port\" or a list of them", n.Line)
}

// ConfigDir is the client's configuration directory on every OS:
// $XDG_CONFIG_HOME/cachetun if XDG_CONFIG_HOME is an absolute path, else
// ~/.config/cachetun (also on macOS, where os.UserConfigDir would say
// ~/Library/Application Support).
func ConfigDir() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "cachetun")
	}
	return auth.ExpandHome("~/.config/cachetun")
}

// DefaultConfigPath is where connect looks for the client configuration.
func DefaultConfigPath() string { return filepath.Join(ConfigDir(), "config.yaml") }

// DefaultKnownHosts is the known_hosts file used when none is configured.
func DefaultKnownHosts() string { return filepath.Join(ConfigDir(), "known_hosts") }

// LoadConfig reads a client configuration. A missing file at the default
// path is not an error: it yields an empty configuration.
func LoadConfig(path string, mustExist bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !mustExist {
		return &Config{}, nil
	}
	if err != nil {
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("read client config: %w", err)}
	}
	cfg := Config{Found: true}
	if err := yamlx.DecodeStrict(data, &cfg); err != nil {
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("config %s: %w", path, err)}
	}
	for name, p := range cfg.Profiles {
		if p == nil {
			return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("config %s: profiles.%s is empty", path, name)}
		}
	}
	return &cfg, nil
}
