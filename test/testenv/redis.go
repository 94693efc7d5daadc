package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// cliTimeout bounds one redis-cli run.
const cliTimeout = 30 * time.Second

// Redis is a redis-server process listening on 127.0.0.1.
//
// The exported fields describe the running server and must not be changed.
// Stop and Restart report failures to the testing.TB given to the start
// function, so call them from that test's goroutine.
type Redis struct {
	// Addr is "127.0.0.1:Port".
	Addr string
	// Port is the port clients connect to (the TLS port for StartRedisTLS).
	Port int
	// Dir is the server's working directory (logs, cluster nodes.conf,
	// certificates); removed on cleanup.
	Dir string
	// Password is the default user's password, taken from a --requirepass
	// argument; empty when there is none.
	Password string

	// CAFile, ClientCertFile and ClientKeyFile are PEM files for TLS
	// servers (StartRedisTLS): the CA that signed the server certificate
	// (valid for 127.0.0.1, ::1 and localhost) and a client certificate
	// signed by the same CA, for --tls-auth-clients yes. Empty otherwise.
	CAFile         string
	ClientCertFile string
	ClientKeyFile  string

	t           testing.TB
	bin         string
	args        []string
	logPath     string
	tlsConf     *tls.Config // nil for plain TCP
	clusterPort int         // cluster bus port, 0 when not a cluster node
	id          string      // cluster node id, "" when not a cluster node

	mu    sync.Mutex // guards the following
	proc  *proc      // current or last run
	admin *respConn  // nil while stopped
	users []ACLUser  // replayed by Restart
}

// ACLUser is a Redis ACL user created with ACL SETUSER by Redis.AddUser.
type ACLUser struct {
	Name string
	// Password is the user's password, used when PasswordFile is empty.
	Password string
	// PasswordFile names a file whose content, less a trailing newline, is
	// the password; read when the user is added.
	PasswordFile string
	// Rules are ACL rules after "reset on >password"; when empty the user
	// may run every command on every key and channel: ~* &* +@all.
	Rules []string
}

// StartRedis starts a standalone redis-server on 127.0.0.1 without
// persistence (--save "" --appendonly no). args are appended to the command
// line, e.g. "--requirepass", "secret", and may override the defaults.
func StartRedis(t testing.TB, args ...string) *Redis {
	t.Helper()
	return startRedis(t, redisConfig{extra: args})
}

// StartRedisTLS starts a standalone redis-server that accepts only TLS, on
// its tls-port (--port 0). A CA, a server certificate and a client
// certificate are generated into Dir; clients need not present a
// certificate (--tls-auth-clients no) unless args say otherwise. Use AddUser
// to create ACL users.
func StartRedisTLS(t testing.TB, args ...string) *Redis {
	t.Helper()
	return startRedis(t, redisConfig{extra: args, tls: true})
}

// redisConfig says how startRedis builds a server's command line.
type redisConfig struct {
	extra   []string
	tls     bool
	cluster bool
	// pick returns n free ports; freePorts unless a test replaces it.
	pick func(n int) ([]int, error)
}

func startRedis(t testing.TB, cfg redisConfig) *Redis {
	t.Helper()
	r := &Redis{
		t:        t,
		bin:      RequireBinary(t, "redis-server"),
		Dir:      t.TempDir(),
		Password: lastFlagValue(cfg.extra, "--requirepass"),
	}
	r.logPath = filepath.Join(r.Dir, "redis.log")
	if cfg.tls {
		pki, err := writePKI(r.Dir)
		if err != nil {
			t.Fatalf("testenv: generate TLS certificates: %v", err)
		}
		r.CAFile, r.ClientCertFile, r.ClientKeyFile = pki.caFile, pki.clientCertFile, pki.clientKeyFile
		r.tlsConf = pki.clientConfig
	}
	t.Cleanup(r.Stop)
	pick := cfg.pick
	if pick == nil {
		pick = freePorts
	}
	nports := 1
	if cfg.cluster {
		nports = 2
	}
	for attempt := 1; ; attempt++ {
		ports, err := pick(nports)
		if err != nil {
			t.Fatalf("testenv: pick free ports: %v", err)
		}
		r.Port = ports[0]
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))
		r.args = []string{
			"--bind", "127.0.0.1",
			"--dir", r.Dir,
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
			"--shutdown-timeout", "0",
			"--repl-diskless-sync-delay", "0",
		}
		if cfg.tls {
			r.args = append(r.args,
				"--port", "0",
				"--tls-port", strconv.Itoa(r.Port),
				"--tls-cert-file", filepath.Join(r.Dir, serverCertName),
				"--tls-key-file", filepath.Join(r.Dir, serverKeyName),
				"--tls-ca-cert-file", r.CAFile,
				"--tls-auth-clients", "no",
			)
		} else {
			r.args = append(r.args, "--port", strconv.Itoa(r.Port))
		}
		if cfg.cluster {
			r.clusterPort = ports[1]
			r.args = append(r.args,
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(r.Dir, "nodes.conf"),
				"--cluster-node-timeout", "2000",
				"--cluster-announce-ip", "127.0.0.1",
				"--cluster-port", strconv.Itoa(r.clusterPort),
			)
			if r.Password != "" {
				r.args = append(r.args, "--masterauth", r.Password)
			}
		}
		r.args = append(r.args, cfg.extra...)

		r.mu.Lock()
		err = r.startLocked()
		r.mu.Unlock()
		if err == nil {
			return r
		}
		if errors.Is(err, errAddrInUse) && attempt < bindAttempts {
			t.Logf("testenv: redis port %d taken before the server bound it, retrying with another (attempt %d/%d)", r.Port, attempt, bindAttempts)
			continue
		}
		t.Fatalf("testenv: start redis-server: %v", err)
	}
}

// lastFlagValue returns the value after the last occurrence of flag in args.
func lastFlagValue(args []string, flag string) string {
	v := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = args[i+1]
		}
	}
	return v
}

// startLocked starts the process, waits until it answers as itself, keeps
// the answering connection as the admin connection and replays ACL users.
// On failure the process is stopped and the error carries its log tail.
func (r *Redis) startLocked() error {
	p, admin, err := startServer("redis-server", r.Addr, r.bin, r.args, r.logPath, r.dialAdmin, (*proc).stop)
	if p != nil {
		r.proc = p
	}
	if err != nil {
		return err
	}
	r.admin = admin
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	for _, u := range r.users {
		if _, err := admin.do(ctx, userArgs(u)...); err != nil {
			p.stop()
			return fmt.Errorf("re-create ACL user %q: %w", u.Name, err)
		}
	}
	return nil
}

// dialAdmin connects, authenticates as the default user and checks that
// the server answering is process pid.
func (r *Redis) dialAdmin(ctx context.Context, pid int) (*respConn, error) {
	rc, err := dialRESP(ctx, r.Addr, r.tlsConf)
	if err != nil {
		return nil, err
	}
	if r.Password != "" {
		if _, err := rc.do(ctx, "AUTH", r.Password); err != nil {
			rc.Close()
			return nil, fmt.Errorf("AUTH: %w", err)
		}
	}
	info, err := rc.str(ctx, "INFO", "server")
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("INFO server: %w", err)
	}
	got, err := infoInt(info, "process_id")
	if err != nil {
		rc.Close()
		return nil, err
	}
	if int(got) != pid {
		rc.Close()
		return nil, fmt.Errorf("%s is answered by pid %d, not by our server (pid %d)", r.Addr, got, pid)
	}
	return rc, nil
}

// do runs a command on the admin connection. After an I/O error the
// connection is dropped and the next call dials a new one.
func (r *Redis) do(ctx context.Context, args ...string) (any, error) {
	r.mu.Lock()
	if r.admin == nil {
		if r.proc == nil || r.proc.exited() {
			r.mu.Unlock()
			return nil, fmt.Errorf("redis %s is stopped", r.Addr)
		}
		rc, err := r.dialAdmin(ctx, r.proc.pid())
		if err != nil {
			r.mu.Unlock()
			return nil, fmt.Errorf("reconnect admin connection: %w", err)
		}
		r.admin = rc
	}
	rc := r.admin
	r.mu.Unlock()

	v, err := rc.do(ctx, args...)
	if err != nil && !isRedisError(err) {
		r.mu.Lock()
		if r.admin == rc {
			rc.Close()
			r.admin = nil
		}
		r.mu.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", strings.Join(args[:min(2, len(args))], " "), r.Addr, err)
	}
	return v, nil
}

// str runs a command whose reply is a string on the admin connection.
func (r *Redis) str(ctx context.Context, args ...string) (string, error) {
	v, err := r.do(ctx, args...)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s on %s: unexpected reply %T", args[0], r.Addr, v)
	}
	return s, nil
}

// mustStr is str that fails the test on error.
func (r *Redis) mustStr(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	s, err := r.str(ctx, args...)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return s
}

// Stop stops the server (SIGTERM, then SIGKILL after a grace period) and
// waits for it to exit. It is idempotent and also runs on cleanup.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.admin != nil {
		r.admin.Close()
		r.admin = nil
	}
	if r.proc != nil {
		r.proc.stop()
	}
}

// Kill kills the server with SIGKILL, as a crash would, and waits for it to
// exit. Restart starts it again.
func (r *Redis) Kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.admin != nil {
		r.admin.Close()
		r.admin = nil
	}
	if r.proc != nil {
		r.proc.kill()
	}
}

// Restart stops the server if it is running and starts it again on the same
// port and directory, with the same arguments, and re-creates the users
// added with AddUser. Data is lost (no persistence); a cluster node keeps
// its identity and rejoins through its nodes.conf.
func (r *Redis) Restart() {
	r.t.Helper()
	r.Stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.startLocked(); err != nil {
		r.t.Fatalf("testenv: restart redis-server on %s: %v", r.Addr, err)
	}
}

// Running reports whether the server process is running.
func (r *Redis) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc != nil && !r.proc.exited()
}

// LogTail returns the last lines the current (or last) run of the server
// logged, for failure messages.
func (r *Redis) LogTail() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return ""
	}
	return r.proc.logTail()
}

// TLSConfig returns a client configuration trusting the server's CA and
// presenting the generated client certificate, or nil for a plain server.
func (r *Redis) TLSConfig() *tls.Config {
	if r.tlsConf == nil {
		return nil
	}
	return r.tlsConf.Clone()
}

// Options returns go-redis options for this server: address, default user
// password and TLS configuration. Adjust them (Username, ...) and pass them
// to redis.NewClient to connect as someone else.
func (r *Redis) Options() *redis.Options {
	return &redis.Options{
		Addr:      r.Addr,
		Password:  r.Password,
		TLSConfig: r.TLSConfig(),
	}
}

// Client returns a go-redis client for this server, authenticated as the
// default user, closed on cleanup. It connects lazily.
func (r *Redis) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(r.Options())
	t.Cleanup(func() { c.Close() })
	return c
}

// CLI runs redis-cli against the server with args (a command and its
// arguments, or options such as --cluster) and returns its standard output
// without the trailing newline. The error is non-nil when redis-cli exits
// non-zero, including on an error reply (redis-cli -e); its text includes
// redis-cli's standard error. The password travels in REDISCLI_AUTH.
func (r *Redis) CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cli := RequireBinary(t, "redis-cli")
	full := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(r.Port), "-e"}
	if r.tlsConf != nil {
		full = append(full, "--tls", "--cacert", r.CAFile, "--cert", r.ClientCertFile, "--key", r.ClientKeyFile)
	}
	full = append(full, args...)
	return runCLI(cli, r.Password, full)
}

// runCLI runs redis-cli with args and password (if any) in REDISCLI_AUTH.
func runCLI(cli, password string, args []string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.Env = os.Environ()
	if password != "" {
		cmd.Env = append(cmd.Env, "REDISCLI_AUTH="+password)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	s := strings.TrimSuffix(string(out), "\n")
	if err != nil {
		return s, fmt.Errorf("redis-cli %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return s, nil
}

// ConnectedClients returns the number of client connections the server has
// open (INFO clients connected_clients), not counting testenv's admin
// connection nor replicas.
func (r *Redis) ConnectedClients(t testing.TB) int {
	t.Helper()
	n, err := infoInt(r.mustStr(t, "INFO", "clients"), "connected_clients")
	if err != nil {
		t.Fatalf("testenv: redis %s: %v", r.Addr, err)
	}
	return int(n) - 1
}

// TotalConnections returns how many connections the server accepted since
// it started (INFO stats total_connections_received). The absolute value
// includes testenv's own start-up probe; reading it opens no connection, so
// compare two readings to count connections made in between. Restart resets
// it.
func (r *Redis) TotalConnections(t testing.TB) int64 {
	t.Helper()
	n, err := infoInt(r.mustStr(t, "INFO", "stats"), "total_connections_received")
	if err != nil {
		t.Fatalf("testenv: redis %s: %v", r.Addr, err)
	}
	return n
}

// AddUser creates (or resets) an ACL user with ACL SETUSER. Restart creates
// it again.
func (r *Redis) AddUser(t testing.TB, u ACLUser) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if u.PasswordFile != "" {
		b, err := os.ReadFile(u.PasswordFile)
		if err != nil {
			t.Fatalf("testenv: read password of ACL user %q: %v", u.Name, err)
		}
		u.Password = strings.TrimRight(string(b), "\r\n")
		u.PasswordFile = ""
	}
	if _, err := r.do(ctx, userArgs(u)...); err != nil {
		t.Fatalf("testenv: add ACL user %q: %v", u.Name, err)
	}
	r.mu.Lock()
	r.users = append(r.users, u)
	r.mu.Unlock()
}

// userArgs returns the ACL SETUSER command that creates u.
func userArgs(u ACLUser) []string {
	args := []string{"ACL", "SETUSER", u.Name, "reset", "on", ">" + u.Password}
	if len(u.Rules) == 0 {
		args = append(args, "~*", "&*", "+@all")
	}
	return append(args, u.Rules...)
}
