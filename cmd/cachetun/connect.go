package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/term"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
)

// ConnectCmd opens one local port per node of one or more targets.
type ConnectCmd struct {
	Profiles         []string `arg:"" name:"profile" optional:"" help:"Profile names from the config file; with --server, just target names." placeholder:"PROFILE" predictor:"profile"`
	All              bool     `help:"Every target the key may use, on the gateway of --server or of the one PROFILE."`
	JSON             bool     `name:"json" help:"Print one JSON line with the endpoints once up, then one per event (topology, reconnect, error)."`
	Config           string   `help:"Client config file (default: $XDG_CONFIG_HOME/cachetun/config.yaml or ~/.config/cachetun/config.yaml)." env:"CACHETUN_CONFIG" placeholder:"PATH" predictor:"file"`
	Server           []string `help:"Gateway address HOST[:PORT]; repeat or comma-separate to fail over." env:"CACHETUN_SERVER" placeholder:"HOST:PORT"`
	Target           string   `help:"Target name on the gateway (default: the profile name)." placeholder:"NAME" predictor:"target"`
	Transport        string   `help:"auto (QUIC, falling back to TLS), quic, tls or ssh (default: transport: in the profile, else auto)." enum:"auto,quic,tls,ssh," default:"" env:"CACHETUN_TRANSPORT" placeholder:"auto|quic|tls|ssh" predictor:"transport"`
	Identity         string   `short:"i" help:"Private key file (default: ssh-agent keys, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa)." env:"CACHETUN_IDENTITY" placeholder:"FILE" predictor:"file"`
	LocalPort        *int     `help:"First local port; node i listens on N+i (default: the first node's port; 0: free ports)." placeholder:"N"`
	Bind             string   `help:"Local address to bind (default 127.0.0.1; anything else re-exposes the cache unencrypted)." placeholder:"ADDR"`
	KnownHosts       string   `help:"known_hosts file (default: known_hosts beside the config file)." env:"CACHETUN_KNOWN_HOSTS" placeholder:"FILE" predictor:"file"`
	cmdName          string   `kong:"-"` // exec, ls, doctor embed ConnectCmd
	AcceptNewHostKey bool     `help:"Record the gateway's host key if it is not known yet (never accepts a changed key)."`
}

// Run connects and serves until SIGINT/SIGTERM.
func (c *ConnectCmd) Run(e *env) error {
	sessions, err := c.sessions()
	if err != nil {
		return err
	}
	// One session's traffic runs through one connection's loops, so a
	// second processor mostly adds thread wake-ups (the figures:
	// BENCHMARKS.md, "What changed", change 4). GOMAXPROCS in the
	// environment still wins.
	if os.Getenv("GOMAXPROCS") == "" {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	}
	drain, _, cancel := stopContext(e.signals)
	defer cancel()
	return runSessions(drain, e, sessions, c.JSON, nil)
}

// options merges flags (and their env vars) over the profile of a
// connect with one PROFILE.
func (c *ConnectCmd) options() (client.Options, error) {
	name := ""
	if len(c.Profiles) > 0 {
		name = c.Profiles[0]
	}
	return c.profileOptions(name)
}

// profileOptions merges flags (and their env vars) over one profile.
func (c *ConnectCmd) profileOptions(profile string) (client.Options, error) {
	path, explicit := c.Config, c.Config != ""
	if !explicit {
		path = client.DefaultConfigPath()
	}
	cfg, err := client.LoadConfig(path, explicit)
	if err != nil {
		return client.Options{}, err
	}
	p := cfg.Profiles[profile]
	if p == nil {
		if len(c.Server) == 0 && !cfg.Found {
			return client.Options{}, &control.Error{Usage: true, Fix: control.FixUser,
				Err:  fmt.Errorf("profile %q: no client config file found (looked for %s)", profile, path),
				Hint: fmt.Sprintf("create %s with a profiles: section (README, 'Client setup'), or pass --server HOST:PORT to use %q as a target name", path, profile),
			}
		}
		if len(c.Server) == 0 {
			return client.Options{}, &control.Error{Usage: true, Fix: control.FixUser,
				Err:  fmt.Errorf("profile %q is not in %s", profile, path),
				Hint: "add it under profiles: in that file, or pass --server HOST:PORT to use " + fmt.Sprintf("%q", profile) + " as a target name",
			}
		}
		p = &client.Profile{}
	}
	opts := client.Options{
		Version:          version,
		Profile:          profile,
		Servers:          p.Server,
		Target:           p.Target,
		Transport:        p.Transport,
		Identity:         p.Identity,
		LocalPort:        p.LocalPort,
		Bind:             p.Bind,
		DeadAfter:        p.DeadAfter,
		KnownHosts:       cfg.KnownHosts,
		AcceptNewHostKey: c.AcceptNewHostKey,
	}
	if opts.Target == "" {
		opts.Target = profile
	}
	if len(c.Server) > 0 {
		opts.Servers = c.Server
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&opts.Target, c.Target)
	set(&opts.Transport, c.Transport)
	set(&opts.Identity, c.Identity)
	set(&opts.Bind, c.Bind)
	set(&opts.KnownHosts, c.KnownHosts)
	if c.LocalPort != nil {
		opts.LocalPort = c.LocalPort
	}
	if len(opts.Servers) == 0 {
		return opts, &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("no gateway address"), Hint: "pass --server HOST:PORT or set server: in profile " + profile}
	}
	return opts, nil
}

// terminalPassphrase asks for a key's passphrase on the terminal, without
// echo, as ssh does; nil when stdin is not a terminal (scripts, tests),
// so a protected key that ssh-agent does not hold is an error there.
func terminalPassphrase(e *env) client.PassphraseFunc {
	f, ok := e.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return func(prompt string) ([]byte, error) {
		fmt.Fprint(e.stderr, prompt)
		p, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		return p, err
	}
}
