package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/server"
)

// ServerCmd runs the gateway (default) or sets one up (init).
type ServerCmd struct {
	Run   ServerRunCmd   `cmd:"" default:"withargs" help:"Run the gateway (default)."`
	Init  ServerInitCmd  `cmd:"" help:"Create a host key and a sample config; print the known_hosts line."`
	Check ServerCheckCmd `cmd:"" help:"Check the config, keys and authorized_keys (like sshd -t); exit code 2 on errors."`
}

// ServerRunCmd runs the gateway in the foreground (systemd Type=notify).
type ServerRunCmd struct {
	Config string `help:"Server config file (default: ${default})." default:"/etc/cachetun/server.yaml" env:"CACHETUN_SERVER_CONFIG" placeholder:"PATH" predictor:"file"`
}

// Run serves until SIGINT/SIGTERM, then drains; a second signal aborts.
// SIGHUP reloads server.yaml and authorized_keys. systemd hears READY once
// the gateway listens, RELOADING around each reload and STOPPING at the
// drain.
func (c *ServerRunCmd) Run(e *env) error {
	cfg, err := server.LoadConfig(c.Config)
	if err != nil {
		return err
	}
	if e.logFormat == "" && cfg.LogFormat != "" { // flag > env > file
		e.log = newLogger(e.stderr, e.logLevel, cfg.LogFormat)
	}
	cfg.Version = version
	if n := gatewayProcs(runtime.GOMAXPROCS(0), os.Getenv("GOMAXPROCS")); n > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n))
	}
	srv, err := server.New(cfg, e.log)
	if err != nil {
		return serverError(err)
	}
	drain, abort, cancel := stopContext(e.signals)
	defer cancel()
	defer context.AfterFunc(abort, srv.Close)() // the second signal
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(drain) }()
	select {
	case err := <-runErr:
		var le *server.ListenError
		if errors.As(err, &le) && le.Listener != "metrics" {
			return &control.Error{Err: err, Hint: "another process holds the port, or the address is wrong: check listen: in " + c.Config, Fix: control.FixOperator}
		}
		return err
	case <-srv.Ready():
	}
	logListening(e.log, srv.Addrs())
	e.log.Info("gateway ready", "version", version, "host_key", ssh.FingerprintSHA256(srv.HostPublicKey()), "targets", strings.Join(cfg.TargetNames(), ","), "go_procs", runtime.GOMAXPROCS(0))
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
	for {
		select {
		case <-e.signals.reload:
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReloading)
			// server.yaml and authorized_keys together, or neither;
			// Reload logs what changed, or the ERROR that kept the old.
			_ = srv.Reload(c.Config)
			_, _ = daemon.SdNotify(false, daemon.SdNotifyReady)
			continue
		case <-drain.Done():
		}
		break
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	e.log.Info("draining: no new sessions; waiting for open streams", "drain_timeout", cfg.Limits.DrainTimeout)
	err = <-runErr
	e.log.Info("stopped")
	return err
}

// logListening logs each address the gateway listens on.
func logListening(log *slog.Logger, a server.Addrs) {
	for _, ln := range []net.Addr{a.QUIC, a.TLS, a.SSH} {
		if ln != nil {
			log.Info("listening", "addr", ln.String(), "network", ln.Network())
		}
	}
	if a.Metrics != nil {
		log.Info("metrics", "addr", "http://"+a.Metrics.String()+"/metrics")
	}
}

// serverError is err of the gateway's set-up with the operator's fix; a
// malformed authorized_keys (an unsupported option included) is a
// configuration error (exit code 2).
func serverError(err error) error {
	return &control.Error{Err: err, Hint: serverHint(err), Fix: control.FixOperator, Usage: errors.Is(err, auth.ErrSyntax)}
}

func serverHint(err error) string {
	var pe *auth.PermissionError
	if errors.As(err, &pe) {
		return pe.Fix
	}
	if errors.Is(err, os.ErrNotExist) {
		return "run 'cachetun server init' to create the host key and config, or fix the path in the config"
	}
	if errors.Is(err, auth.ErrSyntax) {
		return "fix or remove that line of authorized_keys: options that cachetun cannot honour fail the load (see the README's authorized_keys options)"
	}
	return ""
}

// gatewayProcs says how many Go processors the gateway should use, given
// the runtime's default (CPUs, or the cgroup's CPU limit) and the
// GOMAXPROCS environment variable; 0 leaves the default. On 1-2 CPUs it
// is one: a request crosses three to four goroutines (transport read loop,
// stream relay, yamux send loop), and with a second processor idle every
// hand-off wakes another thread, which on a small VM costs more than the
// request itself (the figures: BENCHMARKS.md, "What changed", change 6).
// With more CPUs the gateway keeps one processor per CPU for its many
// sessions. An explicit GOMAXPROCS always wins.
func gatewayProcs(def int, env string) int {
	if env != "" || def > 2 {
		return 0
	}
	return 1
}

// ServerInitCmd creates a host key and a sample configuration.
type ServerInitCmd struct {
	Dir  string `help:"Directory for host key, config and authorized_keys (default: ${default})." default:"/etc/cachetun" placeholder:"DIR" predictor:"file"`
	Name string `help:"Name clients use for this gateway (for the known_hosts line); default: the hostname." placeholder:"HOST"`
}

const sampleConfig = `# cachetun gateway configuration. Reference: README.md, "Server on EC2".
listen:
  quic: ":4433"        # UDP. Empty string disables a transport.
  tls:  ":4433"        # TCP, TLS 1.3 + yamux
  ssh:  ":2222"        # TCP, SSH (stock OpenSSH clients work too)
host_key: %[1]s/host_ed25519
authorized_keys: %[1]s/authorized_keys
targets:
  example-redis:
    type: redis        # redis | redis-cluster | memcached | tcp
    nodes: ["127.0.0.1:6379"]
#  example-cluster:
#    type: redis-cluster
#    nodes: ["clustercfg.example.cache.amazonaws.com:6379"]   # seeds; the rest is discovered
#    refresh: 30s
#    networks: ["10.0.0.0/16"]   # where discovered nodes may live; default: the private ranges
#    tls: {server_name: clustercfg.example.cache.amazonaws.com, ca_file: /etc/ssl/certs/ca-certificates.crt}
#    auth: {username: app, password_file: %[1]s/example-cluster.password}
#  example-memcached:
#    type: memcached
#    discovery: elasticache   # nodes: the configuration endpoint
#    nodes: ["example.cfg.use1.cache.amazonaws.com:11211"]
# limits:
#   idle_timeout: 30m
#   max_streams_per_session: 1024
#   max_sessions_per_key: 16
# metrics: "127.0.0.1:9464"
# log_format: json     # text (default) or json; --log-format and CACHETUN_LOG_FORMAT win
`

// Run writes the files that do not exist yet and prints the known_hosts
// lines for clients.
func (c *ServerInitCmd) Run(e *env) error {
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return &control.Error{Err: fmt.Errorf("create %s: %w", dir, err), Hint: "run as root, or pick another --dir", Fix: control.FixOperator}
	}
	keyPath := filepath.Join(dir, "host_ed25519")
	var pub ssh.PublicKey
	if _, err := os.Stat(keyPath); err == nil {
		s, err := auth.LoadSigner(keyPath)
		if err != nil {
			return serverError(err)
		}
		pub = s.PublicKey()
		fmt.Fprintf(e.stdout, "kept existing host key %s\n", keyPath)
	} else {
		host, _ := os.Hostname()
		if pub, err = auth.GenerateKey(keyPath, "cachetun-host@"+host); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "wrote host key %s\n", keyPath)
	}
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := writeIfMissing(cfgPath, []byte(fmt.Sprintf(sampleConfig, dir)), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "config %s\n", cfgPath)
	akPath := filepath.Join(dir, "authorized_keys")
	if err := writeIfMissing(akPath, []byte("# one OpenSSH public key per line; options: targets=\"a,b\" from=\"CIDR\" expiry-time=\"YYYYMMDD\" cert-authority\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "authorized_keys %s\n", akPath)
	name := c.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	ports, err := listenPorts(cfgPath)
	if err != nil {
		return err
	}
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	fmt.Fprintf(e.stdout, "\nhost key %s\nclients add these lines to ~/.config/cachetun/known_hosts:\n", ssh.FingerprintSHA256(pub))
	for _, p := range ports {
		fmt.Fprintf(e.stdout, "%s %s\n", knownHostsName(name, p), key)
	}
	return nil
}

// listenPorts returns the ports of the transports the config at path
// enables (listen:, over the defaults), QUIC/TLS first, without repeats.
func listenPorts(path string) ([]string, error) {
	listen := server.DefaultConfig().Listen
	doc := struct {
		Listen *server.Listen `yaml:"listen"`
	}{Listen: &listen}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, (&server.ConfigError{File: path, Err: err}).Hinted()
	}
	var ports []string
	for _, a := range []string{listen.QUIC, listen.TLS, listen.SSH} {
		if a == "" {
			continue
		}
		_, p, err := net.SplitHostPort(a)
		if err != nil {
			return nil, (&server.ConfigError{File: path, Err: fmt.Errorf("listen address %q: %w", a, err)}).Hinted()
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// knownHostsName is how known_hosts names host on port: [host]:port, or
// the bare host on port 22.
func knownHostsName(host, port string) string {
	if port == "22" {
		return host
	}
	return "[" + host + "]:" + port
}

func writeIfMissing(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
