package auth

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// knownHostsFile writes lines to a fresh known_hosts file (0600).
func knownHostsFile(t testing.TB, lines ...string) string {
	t.Helper()
	data := strings.Join(lines, "\n")
	if len(lines) > 0 {
		data += "\n"
	}
	return writeFile(t, t.TempDir(), "known_hosts", data, 0o600)
}

func khLine(hosts string, key ssh.PublicKey) string {
	return hosts + " " + pubLine(key)
}

func TestHostKeyChecker_UnknownHost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "known_hosts")
	key := newSigner(t).PublicKey()
	c := &HostKeyChecker{Path: path}
	err := c.Check("gw:4433", nil, key)
	var ue *UnknownHostError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want *UnknownHostError", err)
	}
	if !errors.Is(err, ErrUnknownHost) {
		t.Error("errors.Is(err, ErrUnknownHost) = false")
	}
	wantLine := "[gw]:4433 " + pubLine(key)
	if ue.Host != "gw:4433" || ue.Path != path || ue.Line != wantLine || ue.Fingerprint != Fingerprint(key) {
		t.Errorf("error fields = %+v", ue)
	}
	want := "host key for gw:4433 is not known: run with --accept-new-host-key or add this line to " + path + ": " + wantLine
	if got := err.Error(); got != want {
		t.Errorf("error = %q\nwant    %q", got, want)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check without AcceptNew created %s", path)
	}
	// The printed line, added by hand, is accepted.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Dir(path), "known_hosts", ue.Line+"\n", 0o600)
	if err := c.Check("gw:4433", nil, key); err != nil {
		t.Errorf("after adding the suggested line: %v", err)
	}
}

func TestHostKeyChecker_UnknownHostShowsPathAsConfigured(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	c := &HostKeyChecker{Path: "~/.config/cachetun/known_hosts", AcceptNew: true}
	key := newSigner(t).PublicKey()
	if err := c.Check("gw:4433", nil, key); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(home, ".config", "cachetun", "known_hosts")); err != nil {
		t.Fatalf("~ was not expanded: %v", err)
	}
	c.AcceptNew = false
	err := c.Check("other:4433", nil, key)
	if err == nil || !strings.Contains(err.Error(), "add this line to ~/.config/cachetun/known_hosts: [other]:4433 ") {
		t.Errorf("error = %v, want the path as configured", err)
	}
}

func TestHostKeyChecker_AcceptNew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cfg", "cachetun")
	path := filepath.Join(dir, "known_hosts")
	key := newSigner(t).PublicKey()

	first := &HostKeyChecker{Path: path, AcceptNew: true}
	if err := first.Check("gw.example.com:4433", nil, key); err != nil {
		t.Fatalf("accept new: %v", err)
	}
	for _, tc := range []struct {
		path string
		mode fs.FileMode
	}{{dir, fs.ModeDir | 0o700}, {path, 0o600}} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode() & (fs.ModeDir | fs.ModePerm); got != tc.mode {
			t.Errorf("mode of %s = %v, want %v", tc.path, got, tc.mode)
		}
	}
	data := string(mustRead(t, path))
	if want := knownhosts.Line([]string{"[gw.example.com]:4433"}, key) + "\n"; data != want {
		t.Errorf("known_hosts = %q, want %q", data, want)
	}

	// A second checker, without AcceptNew, accepts the pinned key.
	second := &HostKeyChecker{Path: path}
	if err := second.Check("gw.example.com:4433", nil, key); err != nil {
		t.Errorf("second checker: %v", err)
	}
	// Checking again with AcceptNew does not add a second line.
	if err := first.Check("gw.example.com:4433", nil, key); err != nil {
		t.Fatal(err)
	}
	if got := string(mustRead(t, path)); got != data {
		t.Errorf("known_hosts changed on a repeated check: %q", got)
	}

	// A changed key is refused, with AcceptNew too, and nothing is written.
	attacker := newSigner(t).PublicKey()
	for _, c := range []*HostKeyChecker{first, second} {
		err := c.Check("gw.example.com:4433", nil, attacker)
		var me *HostKeyMismatchError
		if !errors.As(err, &me) {
			t.Fatalf("AcceptNew=%v: err = %v, want *HostKeyMismatchError", c.AcceptNew, err)
		}
		if !errors.Is(err, ErrHostKeyMismatch) {
			t.Error("errors.Is(err, ErrHostKeyMismatch) = false")
		}
		if me.Got != Fingerprint(attacker) || !slices.Equal(me.Want, []string{Fingerprint(key)}) ||
			!slices.Equal(me.Lines, []int{1}) || me.Path != path || me.Host != "gw.example.com:4433" {
			t.Errorf("mismatch fields = %+v", me)
		}
		msg := err.Error()
		for _, want := range []string{"man-in-the-middle", "remove line 1 from " + path, Fingerprint(attacker), Fingerprint(key)} {
			if !strings.Contains(msg, want) {
				t.Errorf("mismatch message %q does not contain %q", msg, want)
			}
		}
	}
	if got := string(mustRead(t, path)); got != data {
		t.Errorf("known_hosts changed after a mismatch: %q", got)
	}

	// Another port of the same host is another entry.
	if err := second.Check("gw.example.com:4434", nil, key); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("other port: err = %v, want ErrUnknownHost", err)
	}
}

func TestHostKeyChecker_AcceptNewPort22(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	key := newSigner(t).PublicKey()
	if err := (&HostKeyChecker{Path: path, AcceptNew: true}).Check("GW.Example.com:22", nil, key); err != nil {
		t.Fatal(err)
	}
	if got, want := string(mustRead(t, path)), "gw.example.com "+pubLine(key)+"\n"; got != want {
		t.Errorf("known_hosts = %q, want %q", got, want)
	}
}

func TestHostKeyChecker_AcceptNewAppendsAfterLastLine(t *testing.T) {
	old := newSigner(t).PublicKey()
	dir := t.TempDir()
	path := writeFile(t, dir, "known_hosts", "# no newline at end\n"+khLine("[old]:4433", old), 0o600)
	key := newSigner(t).PublicKey()
	if err := (&HostKeyChecker{Path: path, AcceptNew: true}).Check("new:4433", nil, key); err != nil {
		t.Fatal(err)
	}
	c := &HostKeyChecker{Path: path}
	for host, k := range map[string]ssh.PublicKey{"old:4433": old, "new:4433": key} {
		if err := c.Check(host, nil, k); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
}

func TestHostKeyChecker_AcceptNewConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	key := newSigner(t).PublicKey()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			errs <- (&HostKeyChecker{Path: path, AcceptNew: true}).Check("gw:4433", nil, key)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := strings.Count(string(mustRead(t, path)), "\n"); n != 1 {
		t.Errorf("known_hosts has %d lines, want 1", n)
	}
}

func TestHostKeyChecker_HostPatterns(t *testing.T) {
	key, other := newSigner(t).PublicKey(), newSigner(t).PublicKey()
	for _, tc := range []struct {
		hosts    string
		hostport string
		want     error // nil, ErrUnknownHost or ErrHostKeyMismatch for `other`
	}{
		{"[gw]:4433", "gw:4433", ErrHostKeyMismatch},
		{"[gw]:4433", "gw:22", ErrUnknownHost},
		{"[gw]:4433", "gw:443", ErrUnknownHost},
		{"gw", "gw:22", ErrHostKeyMismatch},
		{"gw", "gw:4433", ErrUnknownHost},
		{"gw,10.0.0.5", "10.0.0.5:22", ErrHostKeyMismatch},
		{"[gw]:4433,[10.0.0.5]:4433", "10.0.0.5:4433", ErrHostKeyMismatch},
		{"*.example.com", "gw.example.com:22", ErrHostKeyMismatch},
		{"[*.example.com]:4433", "gw.example.com:4433", ErrHostKeyMismatch},
		{"[*.example.com]:4433", "gw.example.org:4433", ErrUnknownHost},
		{"!bad.example.com,*.example.com", "bad.example.com:22", ErrUnknownHost},
		{"!bad.example.com,*.example.com", "good.example.com:22", ErrHostKeyMismatch},
		{"gw?", "gw1:22", ErrHostKeyMismatch},
		{"[::1]:4433", "[::1]:4433", ErrHostKeyMismatch},
		{"::1", "[::1]:22", ErrHostKeyMismatch},
		{"[2001:db8::1]:4433", "[2001:db8::2]:4433", ErrUnknownHost},
		{"gw", "GW:22", ErrHostKeyMismatch},
	} {
		path := knownHostsFile(t, "# comment", "", khLine(tc.hosts, key))
		c := &HostKeyChecker{Path: path}
		if err := c.Check(tc.hostport, nil, other); !errors.Is(err, tc.want) {
			t.Errorf("%q checking %s with another key: err = %v, want %v", tc.hosts, tc.hostport, err, tc.want)
		}
		if tc.want == ErrHostKeyMismatch {
			if err := c.Check(tc.hostport, nil, key); err != nil {
				t.Errorf("%q checking %s with the pinned key: %v", tc.hosts, tc.hostport, err)
			}
		}
	}
}

func TestHostKeyChecker_HashedHosts(t *testing.T) {
	key := newSigner(t).PublicKey()
	path := knownHostsFile(t,
		khLine(knownhosts.HashHostname(knownhosts.Normalize("gw.example.com:4433")), key),
		khLine(knownhosts.HashHostname(knownhosts.Normalize("gw22:22")), key),
	)
	c := &HostKeyChecker{Path: path, AcceptNew: true}
	for _, hp := range []string{"gw.example.com:4433", "gw22:22"} {
		if err := c.Check(hp, nil, key); err != nil {
			t.Errorf("%s: %v", hp, err)
		}
	}
	before := mustRead(t, path)
	var me *HostKeyMismatchError
	if err := c.Check("gw.example.com:4433", nil, newSigner(t).PublicKey()); !errors.As(err, &me) {
		t.Errorf("hashed host, other key: err = %v, want *HostKeyMismatchError", err)
	} else if !slices.Equal(me.Lines, []int{1}) {
		t.Errorf("Lines = %v, want [1]", me.Lines)
	}
	if string(mustRead(t, path)) != string(before) {
		t.Error("known_hosts changed after a mismatch")
	}
}

func TestHostKeyChecker_SSHKeygenInterop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	key := newSigner(t).PublicKey()
	c := &HostKeyChecker{Path: path, AcceptNew: true}
	if err := c.Check("gw:4433", nil, key); err != nil {
		t.Fatal(err)
	}
	// OpenSSH finds the line we wrote ...
	sshKeygen(t, "-F", "[gw]:4433", "-f", path)
	// ... and after it hashes the file, we still find the host.
	sshKeygen(t, "-H", "-f", path)
	if data := string(mustRead(t, path)); !strings.HasPrefix(data, "|1|") {
		t.Fatalf("ssh-keygen -H did not hash the file: %q", data)
	}
	c.AcceptNew = false
	if err := c.Check("gw:4433", nil, key); err != nil {
		t.Errorf("after ssh-keygen -H: %v", err)
	}
	if err := c.Check("gw:4433", nil, newSigner(t).PublicKey()); !errors.Is(err, ErrHostKeyMismatch) {
		t.Errorf("after ssh-keygen -H, other key: err = %v, want ErrHostKeyMismatch", err)
	}
}

func TestHostKeyChecker_Revoked(t *testing.T) {
	key := newSigner(t).PublicKey()
	path := knownHostsFile(t, khLine("[gw]:4433", key), "@revoked * "+pubLine(key))
	for _, acceptNew := range []bool{false, true} {
		err := (&HostKeyChecker{Path: path, AcceptNew: acceptNew}).Check("gw:4433", nil, key)
		if !errors.Is(err, ErrHostKeyRevoked) {
			t.Errorf("AcceptNew=%v: err = %v, want ErrHostKeyRevoked", acceptNew, err)
		} else if !strings.Contains(err.Error(), "line 2") {
			t.Errorf("error %q does not name the @revoked line", err)
		}
	}
	// A revoked key is not pinned for a new host either.
	before := mustRead(t, path)
	if err := (&HostKeyChecker{Path: path, AcceptNew: true}).Check("new:4433", nil, key); !errors.Is(err, ErrHostKeyRevoked) {
		t.Errorf("new host with revoked key: err = %v, want ErrHostKeyRevoked", err)
	}
	if string(mustRead(t, path)) != string(before) {
		t.Error("revoked key was written to known_hosts")
	}
}

func TestHostKeyChecker_CertAuthority(t *testing.T) {
	ca, otherCA := newSigner(t), newSigner(t)
	hostKey := newSigner(t)
	now := time.Now()
	path := knownHostsFile(t, "@cert-authority [*.example.com]:4433,[gw]:4433 "+pubLine(ca.PublicKey())+" host-ca")
	c := &HostKeyChecker{Path: path}

	valid := signCert(t, ca, hostKey.PublicKey(), ssh.HostCert, now, []string{"gw.example.com", "gw"})
	for _, hp := range []string{"gw.example.com:4433", "gw:4433"} {
		if err := c.Check(hp, nil, valid); err != nil {
			t.Errorf("%s: %v", hp, err)
		}
	}
	for _, tc := range []struct {
		name     string
		hostport string
		cert     *ssh.Certificate
		want     error
	}{
		{"wrong principal", "db.example.com:4433", valid, ErrCertInvalid},
		{"expired", "gw:4433", signCert(t, ca, hostKey.PublicKey(), ssh.HostCert, now.Add(-3*time.Hour), []string{"gw"}), ErrCertInvalid},
		{"not yet valid", "gw:4433", signCert(t, ca, hostKey.PublicKey(), ssh.HostCert, now.Add(3*time.Hour), []string{"gw"}), ErrCertInvalid},
		{"user certificate", "gw:4433", signCert(t, ca, hostKey.PublicKey(), ssh.UserCert, now, []string{"gw"}), ErrCertInvalid},
		{"no principals", "gw:4433", signCert(t, ca, hostKey.PublicKey(), ssh.HostCert, now, nil), ErrCertInvalid},
		// Not a CA for this host or port: judged as the plain key, unknown.
		{"other port", "gw:22", valid, ErrUnknownHost},
		{"other CA", "gw:4433", signCert(t, otherCA, hostKey.PublicKey(), ssh.HostCert, now, []string{"gw"}), ErrUnknownHost},
		// A plain key for a host that only has a CA line is unknown, not a
		// mismatch: the CA key is not a pinned host key.
		{"plain key", "gw:4433", nil, ErrUnknownHost},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var key ssh.PublicKey = tc.cert
			if tc.cert == nil {
				key = hostKey.PublicKey()
			}
			err := c.Check(tc.hostport, nil, key)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			var ue *UnknownHostError
			if errors.As(err, &ue) && !strings.HasSuffix(ue.Line, pubLine(hostKey.PublicKey())) {
				t.Errorf("unknown host line %q should pin the plain host key", ue.Line)
			}
		})
	}

	// A tampered certificate does not verify.
	forged := signCert(t, otherCA, hostKey.PublicKey(), ssh.HostCert, now, []string{"gw"})
	forged.SignatureKey = ca.PublicKey()
	if err := c.Check("gw:4433", nil, forged); !errors.Is(err, ErrCertInvalid) {
		t.Errorf("forged cert: err = %v, want ErrCertInvalid", err)
	}

	// A revoked CA, or a revoked certified key, fails.
	for _, revoked := range []ssh.PublicKey{ca.PublicKey(), hostKey.PublicKey()} {
		p := knownHostsFile(t, "@cert-authority [gw]:4433 "+pubLine(ca.PublicKey()), "@revoked * "+pubLine(revoked))
		if err := (&HostKeyChecker{Path: p}).Check("gw:4433", nil, valid); !errors.Is(err, ErrHostKeyRevoked) {
			t.Errorf("revoked %s: err = %v, want ErrHostKeyRevoked", Fingerprint(revoked), err)
		}
		// Also when the CA is not trusted for the host.
		p = knownHostsFile(t, "@revoked * "+pubLine(revoked), khLine("[gw]:4433", hostKey.PublicKey()))
		if err := (&HostKeyChecker{Path: p}).Check("gw:4433", nil, valid); !errors.Is(err, ErrHostKeyRevoked) {
			t.Errorf("revoked %s without CA line: err = %v, want ErrHostKeyRevoked", Fingerprint(revoked), err)
		}
	}
}

func TestHostKeyChecker_CertFromUntrustedCAPinsPlainKey(t *testing.T) {
	ca, hostKey := newSigner(t), newSigner(t)
	path := filepath.Join(t.TempDir(), "known_hosts")
	cert := signCert(t, ca, hostKey.PublicKey(), ssh.HostCert, time.Now(), []string{"gw"})
	if err := (&HostKeyChecker{Path: path, AcceptNew: true}).Check("gw:4433", nil, cert); err != nil {
		t.Fatal(err)
	}
	if got, want := string(mustRead(t, path)), "[gw]:4433 "+pubLine(hostKey.PublicKey())+"\n"; got != want {
		t.Errorf("known_hosts = %q, want the plain key %q", got, want)
	}
	c := &HostKeyChecker{Path: path}
	for _, k := range []ssh.PublicKey{cert, hostKey.PublicKey()} {
		if err := c.Check("gw:4433", nil, k); err != nil {
			t.Errorf("%s: %v", k.Type(), err)
		}
	}
}

func TestHostKeyChecker_SSHKeygenHostCert(t *testing.T) {
	dir := t.TempDir()
	ca, host := filepath.Join(dir, "host_ca"), filepath.Join(dir, "ssh_host_ed25519_key")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", ca)
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", host)
	path := knownHostsFile(t, "@cert-authority [*.example.com]:4433 "+strings.TrimSpace(string(mustRead(t, ca+".pub"))))
	c := &HostKeyChecker{Path: path}
	sign := func(args ...string) ssh.PublicKey {
		t.Helper()
		os.Remove(host + "-cert.pub")
		sshKeygen(t, append(append([]string{"-q", "-s", ca, "-h", "-I", "gw-host"}, args...), host+".pub")...)
		return readPub(t, host+"-cert.pub")
	}

	good := sign("-n", "gw.example.com", "-V", "-5m:+1h")
	if err := c.Check("gw.example.com:4433", nil, good); err != nil {
		t.Errorf("valid ssh-keygen host cert: %v", err)
	}
	if err := c.Check("db.example.com:4433", nil, good); !errors.Is(err, ErrCertInvalid) {
		t.Errorf("wrong principal: err = %v, want ErrCertInvalid", err)
	}
	expired := sign("-n", "gw.example.com", "-V", "20200101:20200102")
	if err := c.Check("gw.example.com:4433", nil, expired); !errors.Is(err, ErrCertInvalid) {
		t.Errorf("expired: err = %v, want ErrCertInvalid", err)
	}
	// LoadSigner presents the host certificate for the server side.
	s, err := LoadSigner(host)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.PublicKey().(*ssh.Certificate); !ok {
		t.Error("LoadSigner did not pick up the host certificate")
	}
}

func TestHostKeyChecker_HostKeyAlgorithms(t *testing.T) {
	ed, ec, rsaKey, ca := newSigner(t), newECDSASigner(t), newRSASigner(t), newSigner(t)
	path := knownHostsFile(t,
		khLine("[ed]:4433", ed.PublicKey()),
		khLine("[ec]:4433", ec.PublicKey()),
		khLine("[rsa]:4433", rsaKey.PublicKey()),
		khLine("[both]:4433", ed.PublicKey()),
		khLine("[both]:4433", ec.PublicKey()),
		"@cert-authority [ca]:4433,[both]:4433 "+pubLine(ca.PublicKey()),
		"@revoked * "+pubLine(newSigner(t).PublicKey()),
	)
	c := &HostKeyChecker{Path: path}
	for _, tc := range []struct {
		host string
		want []string
	}{
		{"ed:4433", []string{ssh.KeyAlgoED25519}},
		{"ec:4433", []string{ssh.KeyAlgoECDSA256}},
		{"rsa:4433", []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}},
		{"ca:4433", certAlgorithms},
		{"both:4433", append(slices.Clone(certAlgorithms), ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256)},
		{"unknown:4433", nil},
		{"ed:22", nil},
		{"not a host", nil},
	} {
		if got := c.HostKeyAlgorithms(tc.host); !slices.Equal(got, tc.want) {
			t.Errorf("HostKeyAlgorithms(%q) = %q, want %q", tc.host, got, tc.want)
		}
	}
	if got := (&HostKeyChecker{Path: filepath.Join(t.TempDir(), "none")}).HostKeyAlgorithms("ed:4433"); got != nil {
		t.Errorf("missing file: HostKeyAlgorithms = %q, want nil", got)
	}
}

func TestHostKeyChecker_InvalidHostPort(t *testing.T) {
	path := filepath.Join(t.TempDir(), "known_hosts")
	c := &HostKeyChecker{Path: path, AcceptNew: true}
	key := newSigner(t).PublicKey()
	for _, hp := range []string{
		"", "gw", "gw:", ":4433", "gw:0", "gw:65536", "gw:abc", "gw:04433",
		"a b:22", "*:22", "gw*:22", "a,b:22", "!gw:22", "[gw]:22]", "gw\n:22",
		"@revoked:22", "|1|x|y:22", "#gw:22",
	} {
		if err := c.Check(hp, nil, key); !errors.Is(err, ErrInvalidHost) {
			t.Errorf("Check(%q) = %v, want ErrInvalidHost", hp, err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Error("an invalid host was written to known_hosts")
	}
}

func TestHostKeyChecker_RemoteAddrFallback(t *testing.T) {
	key := newSigner(t).PublicKey()
	path := knownHostsFile(t, khLine("[10.0.0.5]:4433", key))
	c := &HostKeyChecker{Path: path}
	remote := &net.TCPAddr{IP: net.ParseIP("10.0.0.5"), Port: 4433}
	if err := c.Check("", remote, key); err != nil {
		t.Errorf("empty hostport, remote %v: %v", remote, err)
	}
	// A remote that is not host:port (net.Pipe) is fine when hostport is given.
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if err := c.Check("10.0.0.5:4433", p1.RemoteAddr(), key); err != nil {
		t.Errorf("pipe remote: %v", err)
	}
}

func TestHostKeyChecker_FileErrors(t *testing.T) {
	key := newSigner(t).PublicKey()
	if err := (&HostKeyChecker{}).Check("gw:4433", nil, key); err == nil {
		t.Error("empty Path: want error")
	}
	if err := (&HostKeyChecker{Path: knownHostsFile(t)}).Check("gw:4433", nil, nil); err == nil {
		t.Error("nil key: want error")
	}

	good := khLine("[gw]:4433", key)
	for _, mode := range []fs.FileMode{0o666, 0o620, 0o602} {
		path := writeFile(t, t.TempDir(), "known_hosts", good+"\n", mode)
		err := (&HostKeyChecker{Path: path}).Check("gw:4433", nil, key)
		var pe *PermissionError
		if !errors.As(err, &pe) {
			t.Errorf("mode %04o: err = %v, want *PermissionError", mode, err)
		}
	}
	path := writeFile(t, t.TempDir(), "known_hosts", good+"\n", 0o644)
	if err := (&HostKeyChecker{Path: path}).Check("gw:4433", nil, key); err != nil {
		t.Errorf("mode 0644: %v", err)
	}

	// A malformed line is an error naming it; nothing is appended.
	path = knownHostsFile(t, good, "[bad]:4433 ssh-ed25519 AAAA!!!")
	before := mustRead(t, path)
	err := (&HostKeyChecker{Path: path, AcceptNew: true}).Check("new:4433", nil, key)
	if err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Errorf("malformed line: err = %v, want an error naming line 2", err)
	}
	if string(mustRead(t, path)) != string(before) {
		t.Error("known_hosts with a malformed line was appended to")
	}
}

// sshHandshake runs an x/crypto/ssh handshake over a pipe between a server
// with hostKeys and a client using c, and returns the client's error.
func sshHandshake(t *testing.T, c *HostKeyChecker, hostport string, useAlgorithms bool, hostKeys ...ssh.Signer) error {
	t.Helper()
	srvConf := &ssh.ServerConfig{NoClientAuth: true}
	for _, k := range hostKeys {
		srvConf.AddHostKey(k)
	}
	cliConf := &ssh.ClientConfig{User: "u", HostKeyCallback: c.HostKeyCallback(), Timeout: 5 * time.Second}
	if useAlgorithms {
		cliConf.HostKeyAlgorithms = c.HostKeyAlgorithms(hostport)
	}
	// A real loopback connection: net.Pipe is unbuffered and both sides
	// write their version line first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	sc.SetDeadline(deadline)
	cc.SetDeadline(deadline)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer sc.Close()
		conn, chans, reqs, err := ssh.NewServerConn(sc, srvConf)
		if err != nil {
			return
		}
		go ssh.DiscardRequests(reqs)
		for ch := range chans {
			ch.Reject(ssh.Prohibited, "test")
		}
		conn.Close()
	}()
	conn, chans, reqs, err := ssh.NewClientConn(cc, hostport, cliConf)
	if err == nil {
		go ssh.DiscardRequests(reqs)
		go func() {
			for ch := range chans {
				ch.Reject(ssh.Prohibited, "test")
			}
		}()
		conn.Close()
	}
	cc.Close()
	<-done
	return err
}

func TestHostKeyChecker_HostKeyCallbackSSH(t *testing.T) {
	ed, ec := newSigner(t), newECDSASigner(t)
	path := knownHostsFile(t, khLine("[gw]:2222", ed.PublicKey()))
	c := &HostKeyChecker{Path: path}

	// The server has an ECDSA and an ed25519 key, known_hosts pins ed25519
	// (as OpenSSH records it). With HostKeyAlgorithms the client asks for
	// the pinned key (LIBRARIES pitfall 1) ...
	if err := sshHandshake(t, c, "gw:2222", true, ec, ed); err != nil {
		t.Errorf("with HostKeyAlgorithms: %v", err)
	}
	// ... without, x/crypto prefers ECDSA and sees a changed key.
	if err := sshHandshake(t, c, "gw:2222", false, ec, ed); !errors.Is(err, ErrHostKeyMismatch) {
		t.Errorf("without HostKeyAlgorithms: err = %v, want ErrHostKeyMismatch", err)
	}
	// Unknown host through the callback.
	if err := sshHandshake(t, c, "other:2222", true, ed); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("unknown host: err = %v, want ErrUnknownHost", err)
	}

	// A host certificate signed by a trusted CA.
	ca := newSigner(t)
	caPath := knownHostsFile(t, "@cert-authority [gw]:2222 "+pubLine(ca.PublicKey()))
	cert := signCert(t, ca, ed.PublicKey(), ssh.HostCert, time.Now(), []string{"gw"})
	certSigner, err := ssh.NewCertSigner(cert, ed)
	if err != nil {
		t.Fatal(err)
	}
	cc := &HostKeyChecker{Path: caPath}
	if err := sshHandshake(t, cc, "gw:2222", true, certSigner, ed); err != nil {
		t.Errorf("host certificate: %v", err)
	}
}

// ssh itself (the OpenSSH client) can read a known_hosts file we wrote; this
// guards the line format against drift.
func TestHostKeyChecker_LineFormatMatchesOpenSSH(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not found in PATH: install openssh-client to run this test")
	}
	path := filepath.Join(t.TempDir(), "known_hosts")
	key := newRSASigner(t).PublicKey()
	if err := (&HostKeyChecker{Path: path, AcceptNew: true}).Check("[2001:db8::1]:4433", nil, key); err != nil {
		t.Fatal(err)
	}
	sshKeygen(t, "-F", "[2001:db8::1]:4433", "-f", path)
}
