// Package sshdenv sets up the private OpenSSH server behind the benches'
// stock `ssh -L` path (bench/cmd/cachetun-bench on loopback,
// bench/cmd/cachetun-bench-wan across an emulated link): throw-away host and
// client keys, an sshd_config that allows key-only login and local
// forwarding and nothing else, a known_hosts file that pins the host key,
// and the ssh client's arguments. Both benches use this one set-up, so
// their ssh -L paths are configured alike.
package sshdenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// runDir is sshd's privilege separation directory; sshd refuses to start
// without it.
const runDir = "/run/sshd"

// Env is the key material of one private sshd, in Dir.
type Env struct {
	Dir            string
	HostKey        string // private host key; HostKey+".pub" is its public half
	ClientKey      string // the ssh client's private key
	AuthorizedKeys string // holds ClientKey's public key

	createdRunDir bool
}

// Setup creates dir with a host key and a client key (ssh-keygen, ed25519,
// no passphrase, comment on both), an authorized_keys with the client key,
// and /run/sshd if it is missing (Close removes it again). keygen is the
// ssh-keygen binary; record, when not nil, is told each command before it
// runs.
func Setup(ctx context.Context, dir, keygen, comment string, record func(argv []string)) (*Env, error) {
	if keygen == "" {
		keygen = "ssh-keygen"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, HostKey: filepath.Join(dir, "host_ed25519"), ClientKey: filepath.Join(dir, "client_ed25519"),
		AuthorizedKeys: filepath.Join(dir, "authorized_keys")}
	for _, k := range []string{e.HostKey, e.ClientKey} {
		argv := []string{keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", k}
		if record != nil {
			record(argv)
		}
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ssh-keygen: %w: %s", err, strings.TrimSpace(string(out)))
		}
	}
	pub, err := os.ReadFile(e.ClientKey + ".pub")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(e.AuthorizedKeys, pub, 0o600); err != nil {
		return nil, err
	}
	if _, err := os.Stat(runDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(runDir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s for sshd: %w", runDir, err)
		}
		e.createdRunDir = true
	}
	return e, nil
}

// Close removes /run/sshd if Setup created it and it is still empty. The
// key files stay: they live in the caller's temp dir.
func (e *Env) Close() {
	if e != nil && e.createdRunDir {
		_ = os.Remove(runDir) // fails, harmlessly, unless empty
		e.createdRunDir = false
	}
}

// Config returns the text of an sshd_config listening on listen:port:
// public-key login with the client key only, local forwarding only (no
// agent, X11 or TTY), no PAM, no pid file, no DNS, room for 100 unauthenticated
// connections at once. title is its first line's comment.
func (e *Env) Config(title, listen string, port int) string {
	return fmt.Sprintf(`# %s
Port %d
ListenAddress %s
HostKey %s
PidFile none
UsePAM no
StrictModes no
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
AllowTcpForwarding local
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
MaxStartups 100:30:200
LogLevel INFO
`, title, port, listen, e.HostKey, e.AuthorizedKeys)
}

// WriteConfig writes Config(title, listen, port) to path and returns the
// text.
func (e *Env) WriteConfig(path, title, listen string, port int) (string, error) {
	cfg := e.Config(title, listen, port)
	return cfg, os.WriteFile(path, []byte(cfg), 0o600)
}

// SSHDArgs returns the argv that runs sshd in the foreground with the
// config at conf, logging to stderr. sshd is the binary ("" looks it up,
// falling back to /usr/sbin/sshd, which is outside a user's PATH).
func SSHDArgs(sshd, conf string) []string {
	if sshd == "" {
		if p, err := exec.LookPath("sshd"); err == nil {
			sshd = p
		} else {
			sshd = "/usr/sbin/sshd"
		}
	}
	return []string{sshd, "-D", "-e", "-f", conf}
}

// WriteKnownHosts writes a known_hosts file at path that pins the host key
// for host:port (OpenSSH's "[host]:port" form unless port is 22).
func (e *Env) WriteKnownHosts(path, host string, port int) error {
	pub, err := os.ReadFile(e.HostKey + ".pub")
	if err != nil {
		return err
	}
	f := strings.Fields(string(pub))
	if len(f) < 2 {
		return fmt.Errorf("%s.pub: not an OpenSSH public key", e.HostKey)
	}
	name := host
	if port != 22 {
		name = "[" + host + "]:" + strconv.Itoa(port)
	}
	return os.WriteFile(path, []byte(name+" "+f[0]+" "+f[1]+"\n"), 0o600)
}

// ClientArgs returns the argv of the ssh client (ssh is the binary, ""
// for "ssh") for port: no config file, only the client key, the host key
// pinned by knownHosts, never a prompt, a failed forward an exit, and a
// keep-alive every 15 s; extra (e.g. -N -L ... user@host) follows.
func (e *Env) ClientArgs(ssh string, port int, knownHosts string, extra ...string) []string {
	if ssh == "" {
		ssh = "ssh"
	}
	a := []string{ssh, "-F", "/dev/null", "-p", strconv.Itoa(port),
		"-i", e.ClientKey, "-o", "IdentitiesOnly=yes",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15"}
	return append(a, extra...)
}
