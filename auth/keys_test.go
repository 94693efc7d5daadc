package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

func TestGenerateKey_WritesKeyPair(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "id_ed25519")
	pub, err := GenerateKey(path, "alice@laptop")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pub.Type(), ssh.KeyAlgoED25519; got != want {
		t.Errorf("key type = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{{path, 0o600}, {path + ".pub", 0o644}, {filepath.Dir(path), 0o700 | fs.ModeDir}} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode() & (fs.ModePerm | fs.ModeDir); got != tc.mode {
			t.Errorf("mode of %s = %v, want %v", tc.path, got, tc.mode)
		}
	}
	pubData, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(pubData), pubLine(pub)+" alice@laptop\n"; got != want {
		t.Errorf(".pub = %q, want %q", got, want)
	}
	priv, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(priv, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Errorf("private key is not in OpenSSH format: %.40q", priv)
	}
	s, err := LoadSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
		t.Error("LoadSigner returned another key than GenerateKey")
	}
}

func TestGenerateKey_RefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	existing := writeFile(t, dir, "id", "precious", 0o600)
	_, err := GenerateKey(existing, "")
	if err == nil || !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), existing) {
		t.Fatalf("GenerateKey over existing file: err = %v, want fs.ErrExist naming %s", err, existing)
	}
	if data, _ := os.ReadFile(existing); string(data) != "precious" {
		t.Errorf("existing file was changed to %q", data)
	}

	// A stray .pub is not overwritten either, and no private key is left.
	p := filepath.Join(dir, "id2")
	writeFile(t, dir, "id2.pub", "old", 0o644)
	if _, err := GenerateKey(p, ""); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("GenerateKey with existing .pub: err = %v, want fs.ErrExist", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("private key %s was written although .pub exists (stat err %v)", p, err)
	}
}

func TestGenerateKey_RejectsMultilineComment(t *testing.T) {
	_, err := GenerateKey(filepath.Join(t.TempDir(), "id"), "a\nb")
	if err == nil {
		t.Fatal("GenerateKey with a newline in the comment: want error")
	}
}

func TestGenerateKey_SSHKeygenReadsIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id")
	if _, err := GenerateKey(path, "c"); err != nil {
		t.Fatal(err)
	}
	// ssh-keygen -y derives the public key from the private key file.
	sshKeygen(t, "-l", "-f", path)
	sshKeygen(t, "-y", "-f", path)
}

func TestLoadSigner_RefusesOpenPermissions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "id")
	if _, err := GenerateKey(path, ""); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o601} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadSigner(path)
		var pe *PermissionError
		if !errors.As(err, &pe) {
			t.Fatalf("mode %04o: err = %v, want *PermissionError", mode, err)
		}
		if !errors.Is(err, ErrPermissions) {
			t.Errorf("mode %04o: errors.Is(err, ErrPermissions) = false", mode)
		}
		want := `permissions ` + modeOctal(mode) + ` for "` + path + `" are too open: run chmod 600 ` + path
		if got := err.Error(); got != want {
			t.Errorf("mode %04o: error = %q, want %q", mode, got, want)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadSigner(path); err != nil {
			t.Errorf("mode %04o: err = %v, want nil", mode, err)
		}
	}
}

func modeOctal(m os.FileMode) string {
	const digits = "01234567"
	p := uint32(m.Perm())
	return string([]byte{'0', digits[p>>6&7], digits[p>>3&7], digits[p&7]})
}

func TestLoadSigner_Passphrase(t *testing.T) {
	t.Parallel()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, t.TempDir(), "id", string(pem.EncodeToMemory(block)), 0o600)
	_, err = LoadSigner(path)
	if !errors.Is(err, ErrPassphrase) {
		t.Fatalf("err = %v, want ErrPassphrase", err)
	}
	if !strings.Contains(err.Error(), "ssh-add") || !strings.Contains(err.Error(), path) {
		t.Errorf("error %q should name the file and suggest ssh-add", err)
	}
}

func TestLoadSigner_PassphraseSSHKeygen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "id")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "secret", "-f", path)
	if _, err := LoadSigner(path); !errors.Is(err, ErrPassphrase) {
		t.Fatalf("err = %v, want ErrPassphrase", err)
	}
}

func TestLoadSigner_Formats(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct{ name, typ, want string }{
		{"ed25519", "ed25519", ssh.KeyAlgoED25519},
		{"ecdsa", "ecdsa", ssh.KeyAlgoECDSA256},
		{"rsa", "rsa", ssh.KeyAlgoRSA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			sshKeygen(t, "-q", "-t", tc.typ, "-N", "", "-f", path)
			s, err := LoadSigner(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.PublicKey().Type(); got != tc.want {
				t.Errorf("type = %q, want %q", got, tc.want)
			}
			// PEM (PKCS#1 / SEC1 / PKCS#8) export of the same key.
			if tc.typ == "ed25519" {
				return
			}
			pemPath := path + ".pem"
			data, _ := os.ReadFile(path)
			writeFile(t, dir, tc.name+".pem", string(data), 0o600)
			sshKeygen(t, "-q", "-p", "-N", "", "-m", "PEM", "-f", pemPath)
			ps, err := LoadSigner(pemPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ps.PublicKey().Marshal(), s.PublicKey().Marshal()) {
				t.Error("PEM key differs from OpenSSH key")
			}
		})
	}
}

func TestLoadSigner_Errors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadSigner(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: err = %v, want fs.ErrNotExist", err)
	}
	garbage := writeFile(t, dir, "garbage", "not a key\n", 0o600)
	if _, err := LoadSigner(garbage); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("garbage file: err = %v, want error naming it", err)
	}
}

func TestLoadSigner_Certificate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "id")
	pub, err := GenerateKey(path, "")
	if err != nil {
		t.Fatal(err)
	}
	ca := newSigner(t)
	cert := signCert(t, ca, pub, ssh.UserCert, testNow, []string{"prod"})
	writeFile(t, dir, "id-cert.pub", string(ssh.MarshalAuthorizedKey(cert)), 0o644)

	s, err := LoadSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := s.PublicKey().(*ssh.Certificate)
	if !ok {
		t.Fatalf("signer public key is %T, want *ssh.Certificate", s.PublicKey())
	}
	if !bytes.Equal(got.Marshal(), cert.Marshal()) {
		t.Error("signer presents another certificate")
	}

	// A certificate for another key is ignored.
	other := signCert(t, ca, newSigner(t).PublicKey(), ssh.UserCert, testNow, []string{"prod"})
	writeFile(t, dir, "id-cert.pub", string(ssh.MarshalAuthorizedKey(other)), 0o644)
	s, err = LoadSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.PublicKey().(*ssh.Certificate); ok {
		t.Error("certificate for another key was attached")
	}

	// A garbled certificate file is an error naming it.
	bad := writeFile(t, dir, "id-cert.pub", "ssh-ed25519-cert-v01@openssh.com AAAAgarbage\n", 0o644)
	if _, err := LoadSigner(path); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("garbled cert: err = %v, want error naming %s", err, bad)
	}
}

func TestLoadSigner_SSHKeygenCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, user := filepath.Join(dir, "ca"), filepath.Join(dir, "user")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", ca)
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", user)
	sshKeygen(t, "-q", "-s", ca, "-I", "alice", "-n", "prod", "-V", "+1h", user+".pub")
	s, err := LoadSigner(user)
	if err != nil {
		t.Fatal(err)
	}
	cert, ok := s.PublicKey().(*ssh.Certificate)
	if !ok {
		t.Fatalf("signer public key is %T, want *ssh.Certificate", s.PublicKey())
	}
	if cert.KeyId != "alice" {
		t.Errorf("KeyId = %q, want alice", cert.KeyId)
	}
}

func TestAgentSigners_Unset(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	signers, err := AgentSigners()
	if signers != nil || err != nil {
		t.Errorf("AgentSigners() = %v, %v; want nil, nil", signers, err)
	}
}

// serveAgent serves keyring on a unix socket and points SSH_AUTH_SOCK at it.
func serveAgent(t *testing.T, keyring agent.Agent) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			go agent.ServeAgent(keyring, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
		closeAgentForTest()
	})
	t.Setenv("SSH_AUTH_SOCK", sock)
	return sock
}

func closeAgentForTest() {
	agentConn.mu.Lock()
	defer agentConn.mu.Unlock()
	if agentConn.conn != nil {
		agentConn.conn.Close()
	}
	agentConn.sock, agentConn.conn, agentConn.client = "", nil, nil
}

func TestAgentSigners_Keyring(t *testing.T) {
	keyring := agent.NewKeyring()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := keyring.Add(agent.AddedKey{PrivateKey: priv, Comment: "agent-key"}); err != nil {
		t.Fatal(err)
	}
	serveAgent(t, keyring)

	signers, err := AgentSigners()
	if err != nil {
		t.Fatal(err)
	}
	if len(signers) != 1 {
		t.Fatalf("got %d signers, want 1", len(signers))
	}
	// The signer works after AgentSigners returned: the connection is kept.
	binding := bytes.Repeat([]byte{7}, 32)
	sig, err := SignBinding(signers[0], binding)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyBinding(signers[0].PublicKey(), binding, sig); err != nil {
		t.Fatal(err)
	}
	// A second call reuses the connection.
	again, err := AgentSigners()
	if err != nil || len(again) != 1 {
		t.Fatalf("second AgentSigners() = %d signers, %v", len(again), err)
	}
}

func TestAgentSigners_DeadSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nothing")
	t.Setenv("SSH_AUTH_SOCK", sock)
	t.Cleanup(closeAgentForTest)
	_, err = AgentSigners()
	if err == nil || !strings.Contains(err.Error(), "SSH_AUTH_SOCK") {
		t.Errorf("err = %v, want an error mentioning SSH_AUTH_SOCK", err)
	}
}

func TestFingerprint_MatchesSSHKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id")
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", path)
	pub := readPub(t, path+".pub")
	got := Fingerprint(pub)
	if !strings.HasPrefix(got, "SHA256:") {
		t.Fatalf("Fingerprint = %q, want SHA256:...", got)
	}
	if want := ssh.FingerprintSHA256(pub); got != want {
		t.Errorf("Fingerprint = %q, want %q", got, want)
	}
}

func TestExpandHome(t *testing.T) {
	t.Setenv("HOME", "/home/alice")
	for _, tc := range []struct{ in, want string }{
		{"~/.ssh/id_ed25519", "/home/alice/.ssh/id_ed25519"},
		{"~", "/home/alice"},
		{"/etc/cachetun/host", "/etc/cachetun/host"},
		{"~bob/x", "~bob/x"},
		{"rel/~/x", "rel/~/x"},
		{"", ""},
	} {
		if got := ExpandHome(tc.in); got != tc.want {
			t.Errorf("ExpandHome(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
