package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
)

// writeKey writes a private key of typ (ed25519, ecdsa, rsa) to path, mode
// 0600, protected by passphrase if it is not empty, with its .pub beside.
func writeKey(t *testing.T, path, typ, passphrase string) (any, ssh.PublicKey) {
	t.Helper()
	var priv any
	switch typ {
	case "ed25519":
		_, k, _ := ed25519.GenerateKey(rand.Reader)
		priv = k
	case "ecdsa":
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		priv = k
	case "rsa":
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		priv = k
	}
	var block *pem.Block
	var err error
	if passphrase != "" {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, typ+"@test", []byte(passphrase))
	} else {
		block, err = ssh.MarshalPrivateKey(priv, typ+"@test")
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(s.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, s.PublicKey()
}

func fakeHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	return home
}

// startAgent runs a real ssh-agent on a socket of its own holding keys, in
// that order.
func startAgent(t *testing.T, keys ...any) {
	t.Helper()
	bin, err := exec.LookPath("ssh-agent")
	if err != nil {
		t.Skip("ssh-agent not installed")
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, bin, "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); cancel() })
	var c net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh-agent socket: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	defer c.Close()
	ac := agent.NewClient(c)
	for _, k := range keys {
		if err := ac.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("SSH_AUTH_SOCK", sock)
}

func names(ks *keySet) []string {
	var out []string
	for _, n := range ks.names {
		out = append(out, n[:strings.IndexByte(n, ' ')])
	}
	return out
}

// TestLoadKeys_Order: the agent's keys in the agent's order, then
// ~/.ssh/id_ed25519, id_ecdsa, id_rsa; a file the agent already holds is
// offered once.
func TestLoadKeys_Order(t *testing.T) {
	home := fakeHome(t)
	writeKey(t, filepath.Join(home, ".ssh/id_rsa"), "rsa", "")
	writeKey(t, filepath.Join(home, ".ssh/id_ecdsa"), "ecdsa", "")
	edPriv, edPub := writeKey(t, filepath.Join(home, ".ssh/id_ed25519"), "ed25519", "")
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)

	ks, err := loadKeys("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(names(ks), " "), "~/.ssh/id_ed25519 ~/.ssh/id_ecdsa ~/.ssh/id_rsa"; got != want {
		t.Fatalf("without an agent: keys %q, want %q", got, want)
	}
	if got := ks.tried(); !strings.Contains(got, "ssh-agent: not running (SSH_AUTH_SOCK is not set)") {
		t.Errorf("tried = %q, want the agent noted as not running", got)
	}

	startAgent(t, otherPriv, edPriv)
	ks, err = loadKeys("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(names(ks), " "), "ssh-agent ssh-agent ~/.ssh/id_ecdsa ~/.ssh/id_rsa"; got != want {
		t.Fatalf("with an agent: keys %q, want %q", got, want)
	}
	if !sameKey(ks.signers[1].PublicKey(), edPub) {
		t.Errorf("second key is %s, want the agent's copy of id_ed25519 %s", auth.Fingerprint(ks.signers[1].PublicKey()), auth.Fingerprint(edPub))
	}
}

// TestLoadKeys_SkippedFiles: a default key file with loose permissions or
// a passphrase (and no terminal) is skipped with the reason, and the other
// files are still used.
func TestLoadKeys_SkippedFiles(t *testing.T) {
	home := fakeHome(t)
	writeKey(t, filepath.Join(home, ".ssh/id_ed25519"), "ed25519", "")
	os.Chmod(filepath.Join(home, ".ssh/id_ed25519"), 0o644)
	writeKey(t, filepath.Join(home, ".ssh/id_ecdsa"), "ecdsa", "pw")
	writeKey(t, filepath.Join(home, ".ssh/id_rsa"), "rsa", "")
	ks, err := loadKeys("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(names(ks), " "), "~/.ssh/id_rsa"; got != want {
		t.Fatalf("keys %q, want %q", got, want)
	}
	for _, want := range []string{
		"~/.ssh/id_ed25519: ignored, permissions are too open",
		"~/.ssh/id_ecdsa: protected by a passphrase and not in ssh-agent",
	} {
		if !strings.Contains(ks.tried(), want) {
			t.Errorf("tried = %q, want %q", ks.tried(), want)
		}
	}
}

// TestLoadKeys_None: with no key anywhere the error lists every place
// looked at and the hint names the user's fix.
func TestLoadKeys_None(t *testing.T) {
	home := fakeHome(t)
	writeKey(t, filepath.Join(home, ".ssh/id_ecdsa"), "ecdsa", "pw")
	_, err := loadKeys("", nil)
	var ce *control.Error
	if !errors.As(err, &ce) || !errors.Is(err, ErrNoKey) {
		t.Fatalf("err = %v, want *control.Error wrapping ErrNoKey", err)
	}
	want := "no SSH key to authenticate with: tried ssh-agent: not running (SSH_AUTH_SOCK is not set); ~/.ssh/id_ed25519: not found; ~/.ssh/id_ecdsa: protected by a passphrase and not in ssh-agent; ~/.ssh/id_rsa: not found"
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	if want := "run ssh-add ~/.ssh/id_ecdsa, or pass -i KEYFILE"; ce.Hint != want {
		t.Errorf("hint:\n got %s\nwant %s", ce.Hint, want)
	}
}

// TestLoadKeys_PromptWhenUsed: a protected default key is decrypted only
// when its first signature is needed, with the passphrase from the prompt;
// a wrong passphrase is asked again, up to 3 times.
func TestLoadKeys_PromptWhenUsed(t *testing.T) {
	home := fakeHome(t)
	writeKey(t, filepath.Join(home, ".ssh/id_ecdsa"), "ecdsa", "right")
	var prompts []string
	answers := []string{"wrong", "right"}
	prompt := func(p string) ([]byte, error) {
		prompts = append(prompts, p)
		a := answers[0]
		answers = answers[1:]
		return []byte(a), nil
	}
	ks, err := loadKeys("", prompt)
	if err != nil {
		t.Fatal(err)
	}
	if len(prompts) != 0 {
		t.Fatalf("prompted %d times while loading, want 0 before the key is used", len(prompts))
	}
	sig, err := ks.signers[0].Sign(rand.Reader, []byte("data"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.signers[0].PublicKey().Verify([]byte("data"), sig); err != nil {
		t.Fatal(err)
	}
	if len(prompts) != 2 || prompts[0] != `Enter passphrase for key "~/.ssh/id_ecdsa": ` {
		t.Fatalf("prompts = %q, want 2 for ~/.ssh/id_ecdsa", prompts)
	}
}

// TestLoadKeys_IdentityPublicHalf: -i id_ed25519.pub is the public half:
// the agent's copy is used if it holds the key, else the error says to
// pass the private file (not "chmod 600").
func TestLoadKeys_IdentityPublicHalf(t *testing.T) {
	home := fakeHome(t)
	path := filepath.Join(home, ".ssh/id_ed25519")
	priv, pub := writeKey(t, path, "ed25519", "")
	_, err := loadKeys(path+".pub", nil)
	var ce *control.Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *control.Error", err)
	}
	if want := "it is a public key (" + auth.Fingerprint(pub) + "), and ssh-agent does not hold its private key"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	if want := "pass the private key file with -i (" + path + "), or add the key to ssh-agent (ssh-add " + path + ")"; ce.Hint != want {
		t.Errorf("hint:\n got %s\nwant %s", ce.Hint, want)
	}

	startAgent(t, priv)
	ks, err := loadKeys(path+".pub", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.signers) != 1 || !sameKey(ks.signers[0].PublicKey(), pub) || !strings.HasPrefix(ks.names[0], "ssh-agent, for ") {
		t.Fatalf("keys %q, want the agent's copy of %s", ks.names, auth.Fingerprint(pub))
	}
}

// TestLoadKeys_IdentityProtected: -i of a protected file asks the prompt
// when the agent does not hold it, and fails with the ssh-add fix when
// there is no terminal.
func TestLoadKeys_IdentityProtected(t *testing.T) {
	home := fakeHome(t)
	path := filepath.Join(home, "k")
	_, pub := writeKey(t, path, "ed25519", "pw")
	_, err := loadKeys(path, nil)
	if !errors.Is(err, auth.ErrPassphrase) || !strings.Contains(errText(err), "ssh-add") {
		t.Fatalf("without a terminal: %s, want ErrPassphrase and the ssh-add fix", errText(err))
	}
	ks, err := loadKeys(path, func(string) ([]byte, error) { return []byte("pw"), nil })
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(ks.signers[0].PublicKey(), pub) {
		t.Fatal("wrong key")
	}
}

func errText(err error) string {
	var ce *control.Error
	if errors.As(err, &ce) {
		return err.Error() + "\nhint: " + ce.Hint
	}
	return err.Error()
}
