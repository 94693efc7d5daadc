package client

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/internal/yamlx"
)

// Config is the client configuration, ~/.config/cachetun/config.yaml.
type Config struct {
	KnownHosts string              `yaml:"known_hosts"`
	Profiles   map[string]*Profile `yaml:"profiles"`
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

// DefaultConfigPath is where connect looks for the client configuration.
func DefaultConfigPath() string {
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "cachetun", "config.yaml")
	}
	return auth.ExpandHome("~/.config/cachetun/config.yaml")
}

// DefaultKnownHosts is the known_hosts file used when none is configured.
func DefaultKnownHosts() string {
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "cachetun", "known_hosts")
	}
	return auth.ExpandHome("~/.config/cachetun/known_hosts")
}

// ConfigError is a usage or configuration error (exit code 2).
type ConfigError struct {
	Err  error
	Hint string
}

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// LoadConfig reads a client configuration. A missing file at the default
// path is not an error: it yields an empty configuration.
func LoadConfig(path string, mustExist bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !mustExist {
		return &Config{}, nil
	}
	if err != nil {
		return nil, &ConfigError{Err: fmt.Errorf("read client config: %w", err)}
	}
	var cfg Config
	if err := yamlx.DecodeStrict(data, &cfg); err != nil {
		return nil, &ConfigError{Err: fmt.Errorf("config %s: %w", path, err)}
	}
	for name, p := range cfg.Profiles {
		if p == nil {
			return nil, &ConfigError{Err: fmt.Errorf("config %s: profiles.%s is empty", path, name)}
		}
	}
	return &cfg, nil
}
