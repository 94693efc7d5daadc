package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
)

// DefaultKeyFiles are the private key files tried after the ssh-agent's
// keys when no identity is given, in order.
var DefaultKeyFiles = []string{"~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"}

// PassphraseFunc asks the user for the passphrase of a private key file;
// prompt names the file. It must not echo what is typed.
type PassphraseFunc func(prompt string) ([]byte, error)

// keySet is what loadKeys found: the keys to offer, in order, and why the
// other places it looked gave none.
type keySet struct {
	signers []ssh.Signer
	names   []string // parallel to signers: where the key came from
	skipped []string // "~/.ssh/id_rsa: not found"
}

func (ks *keySet) add(s ssh.Signer, name string) {
	k := s.PublicKey().Marshal()
	for _, o := range ks.signers {
		if bytes.Equal(o.PublicKey().Marshal(), k) {
			return // e.g. a key both in ssh-agent and on disk
		}
	}
	ks.signers = append(ks.signers, s)
	ks.names = append(ks.names, name)
}

// has reports whether pub (or a certificate of pub) is in the set.
func (ks *keySet) has(pub ssh.PublicKey) bool {
	for _, s := range ks.signers {
		if sameKey(s.PublicKey(), pub) {
			return true
		}
	}
	return false
}

// sameKey reports whether a is b, or a certificate of b.
func sameKey(a, b ssh.PublicKey) bool {
	if c, ok := a.(*ssh.Certificate); ok {
		a = c.Key
	}
	return bytes.Equal(a.Marshal(), b.Marshal())
}

// tried lists every key looked at, with what became of it.
func (ks *keySet) tried() string {
	all := append([]string(nil), ks.names...)
	all = append(all, ks.skipped...)
	return strings.Join(all, "; ")
}

func keyName(source string, pub ssh.PublicKey) string {
	if c, ok := pub.(*ssh.Certificate); ok {
		return fmt.Sprintf("%s (%s-CERT %s, certificate %q)", source, keyType(c.Key), auth.Fingerprint(c.Key), c.KeyId)
	}
	return fmt.Sprintf("%s (%s %s)", source, keyType(pub), auth.Fingerprint(pub))
}

// keyType names a key's type as ssh-keygen -l does: ED25519, ECDSA, RSA.
func keyType(pub ssh.PublicKey) string {
	t := pub.Type()
	switch {
	case strings.HasPrefix(t, "ecdsa-"):
		return "ECDSA"
	case strings.HasPrefix(t, "sk-ecdsa-"):
		return "ECDSA-SK"
	case strings.HasPrefix(t, "sk-ssh-ed25519"):
		return "ED25519-SK"
	}
	return strings.ToUpper(strings.TrimPrefix(t, "ssh-"))
}

// agentKeys lists the agent's keys once per load.
type agentKeys struct {
	once    sync.Once
	signers []ssh.Signer
	err     error
}

func (a *agentKeys) get() ([]ssh.Signer, error) {
	a.once.Do(func() { a.signers, a.err = auth.AgentSigners() })
	return a.signers, a.err
}

// matching returns the agent's signers for pub (the key and its
// certificates), certificates first.
func (a *agentKeys) matching(pub ssh.PublicKey) []ssh.Signer {
	all, _ := a.get()
	var certs, plain []ssh.Signer
	for _, s := range all {
		if !sameKey(s.PublicKey(), pub) {
			continue
		}
		if _, ok := s.PublicKey().(*ssh.Certificate); ok {
			certs = append(certs, s)
		} else {
			plain = append(plain, s)
		}
	}
	return append(certs, plain...)
}

// loadKeys returns the keys to offer. With an identity file, only that key
// (from the agent if the agent holds it, which is how a passphrase-protected
// file is used without a prompt). Without one, as OpenSSH does: the agent's
// keys, then DefaultKeyFiles. A passphrase-protected file the agent does not
// hold is decrypted with prompt (nil: never prompt), for the default files
// only when the gateway gets to that key.
func loadKeys(identity string, prompt PassphraseFunc) (*keySet, error) {
	ks := &keySet{}
	agent := &agentKeys{}
	if identity != "" {
		if err := loadIdentity(ks, agent, identity, prompt); err != nil {
			return nil, err
		}
		return ks, nil
	}
	signers, agentErr := agent.get()
	for _, s := range signers {
		ks.add(s, keyName("ssh-agent", s.PublicKey()))
	}
	switch {
	case agentErr != nil:
		ks.skipped = append(ks.skipped, "ssh-agent: "+agentErr.Error())
	case os.Getenv("SSH_AUTH_SOCK") == "":
		ks.skipped = append(ks.skipped, "ssh-agent: not running (SSH_AUTH_SOCK is not set)")
	case len(signers) == 0:
		ks.skipped = append(ks.skipped, "ssh-agent: holds no keys")
	}
	var fixes []string
	for _, f := range DefaultKeyFiles {
		path := auth.ExpandHome(f)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			ks.skipped = append(ks.skipped, f+": not found")
			continue
		}
		s, err := auth.LoadSigner(path)
		if err == nil {
			ks.add(s, keyName(f, s.PublicKey()))
			continue
		}
		var pe *auth.PermissionError
		if errors.As(err, &pe) {
			ks.skipped = append(ks.skipped, f+": ignored, permissions are too open")
			fixes = append(fixes, pe.Fix)
			continue
		}
		if !errors.Is(err, auth.ErrPassphrase) {
			ks.skipped = append(ks.skipped, f+": "+err.Error())
			continue
		}
		pub, perr := auth.PrivateKeyPublic(path)
		switch {
		case perr == nil && ks.has(pub):
			// The agent holds it: already offered.
		case perr == nil && prompt != nil:
			ks.add(&promptSigner{pub: pub, path: path, name: f, prompt: prompt}, keyName(f, pub))
		default:
			ks.skipped = append(ks.skipped, f+": protected by a passphrase and not in ssh-agent")
			fixes = append(fixes, "ssh-add "+f)
		}
	}
	if len(ks.signers) == 0 {
		hint := "run 'cachetun keygen' and give the .pub line to the gateway's operator, or pass -i KEYFILE, or add your key to ssh-agent (ssh-add KEYFILE)"
		if len(fixes) > 0 {
			hint = "run " + strings.Join(fixes, " or ") + ", or pass -i KEYFILE"
		}
		return nil, &control.Error{Err: fmt.Errorf("%w: tried %s", ErrNoKey, ks.tried()), Hint: hint, Fix: control.FixUser}
	}
	return ks, nil
}

// loadIdentity adds the key of the -i file to ks.
func loadIdentity(ks *keySet, agent *agentKeys, identity string, prompt PassphraseFunc) error {
	path := auth.ExpandHome(identity)
	// The public half? Use the agent's copy, as ssh -i key.pub does.
	if pub, ok := readPublicKey(path); ok {
		for _, s := range agent.matching(pub) {
			ks.add(s, keyName("ssh-agent, for "+identity, s.PublicKey()))
		}
		if len(ks.signers) > 0 {
			return nil
		}
		priv := strings.TrimSuffix(identity, ".pub")
		if priv == identity {
			priv = "the private key file"
		}
		return &control.Error{
			Err:  fmt.Errorf("load identity %q: it is a public key (%s), and ssh-agent does not hold its private key", identity, auth.Fingerprint(pub)),
			Hint: "pass the private key file with -i (" + priv + "), or add the key to ssh-agent (ssh-add " + priv + ")", Fix: control.FixUser}
	}
	s, err := auth.LoadSigner(path)
	if err == nil {
		ks.add(s, keyName(identity, s.PublicKey()))
		return nil
	}
	if !errors.Is(err, auth.ErrPassphrase) {
		return &control.Error{Err: fmt.Errorf("load identity: %w", err), Hint: identityHint(err), Fix: control.FixUser}
	}
	pub, perr := auth.PrivateKeyPublic(path)
	if perr == nil {
		for _, s := range agent.matching(pub) {
			ks.add(s, keyName("ssh-agent, for "+identity, s.PublicKey()))
		}
		if len(ks.signers) > 0 {
			return nil
		}
	}
	if prompt == nil {
		return &control.Error{Err: fmt.Errorf("load identity: %w", err), Hint: identityHint(err), Fix: control.FixUser}
	}
	s, err = unlock(path, identity, prompt)
	if err != nil {
		return &control.Error{Err: fmt.Errorf("load identity: %w", err), Hint: identityHint(err), Fix: control.FixUser}
	}
	ks.add(s, keyName(identity, s.PublicKey()))
	return nil
}

// readPublicKey reports whether path holds a public key (authorized_keys
// format), the mistake of passing id_ed25519.pub to -i.
func readPublicKey(path string) (ssh.PublicKey, bool) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, false
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	return pub, err == nil
}

// maxPassphraseTries is how often a wrong passphrase is asked again, as
// OpenSSH's NumberOfPasswordPrompts.
const maxPassphraseTries = 3

// unlock decrypts the key file at path with a passphrase from prompt.
func unlock(path, shown string, prompt PassphraseFunc) (ssh.Signer, error) {
	var err error
	for range maxPassphraseTries {
		var pass []byte
		pass, err = prompt(fmt.Sprintf("Enter passphrase for key %q: ", shown))
		if err != nil {
			return nil, fmt.Errorf("read passphrase for %q: %w", shown, err)
		}
		if len(pass) == 0 {
			return nil, fmt.Errorf("no passphrase given for %q: %w", shown, auth.ErrPassphrase)
		}
		var s ssh.Signer
		s, err = auth.LoadSignerWithPassphrase(path, pass)
		clear(pass)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, auth.ErrPassphrase) {
			return nil, err
		}
	}
	return nil, err
}

// promptSigner is a passphrase-protected key file that is decrypted when
// the first signature is needed, i.e. only once the gateway got as far as
// this key (SSH asks the gateway before it signs).
type promptSigner struct {
	pub    ssh.PublicKey
	path   string
	name   string
	prompt PassphraseFunc

	once sync.Once
	s    ssh.Signer
	err  error
}

func (p *promptSigner) PublicKey() ssh.PublicKey { return p.pub }

func (p *promptSigner) load() (ssh.Signer, error) {
	p.once.Do(func() { p.s, p.err = unlock(p.path, p.name, p.prompt) })
	return p.s, p.err
}

func (p *promptSigner) Sign(rand io.Reader, data []byte) (*ssh.Signature, error) {
	s, err := p.load()
	if err != nil {
		return nil, err
	}
	return s.Sign(rand, data)
}

// SignWithAlgorithm makes RSA keys usable with rsa-sha2-256/512.
func (p *promptSigner) SignWithAlgorithm(rand io.Reader, data []byte, algorithm string) (*ssh.Signature, error) {
	s, err := p.load()
	if err != nil {
		return nil, err
	}
	as, ok := s.(ssh.AlgorithmSigner)
	if !ok {
		return nil, fmt.Errorf("key %q cannot sign with %s", p.name, algorithm)
	}
	return as.SignWithAlgorithm(rand, data, algorithm)
}

func identityHint(err error) string {
	var pe *auth.PermissionError
	if errors.As(err, &pe) {
		return pe.Fix
	}
	if errors.Is(err, auth.ErrPassphrase) {
		return "add the key to ssh-agent (ssh-add KEYFILE), or run on a terminal to be asked for the passphrase"
	}
	if errors.Is(err, fs.ErrNotExist) {
		return "check the path given to -i (or identity: in the profile)"
	}
	return "pass -i with an OpenSSH private key file"
}
