package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// maxFileSize bounds every key, certificate, authorized_keys and known_hosts
// file this package reads.
const maxFileSize = 16 << 20

// GenerateKey creates a new ed25519 key. The private key is written in
// OpenSSH format to path (mode 0600) and the public key, with comment, to
// path+".pub" (mode 0644). Missing parent directories are created with mode
// 0700. It refuses to overwrite either file.
func GenerateKey(path, comment string) (ssh.PublicKey, error) {
	if strings.IndexFunc(comment, unicode.IsControl) >= 0 {
		return nil, fmt.Errorf("generate key: comment %q contains control characters: use a single line of text", comment)
	}
	pubPath := path + ".pub"
	for _, p := range []string{path, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("generate key: %q already exists: remove it or choose another file: %w", p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("generate key: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}

	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	defer clear(priv)
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	pemBytes := pem.EncodeToMemory(block)
	clear(block.Bytes)
	defer clear(pemBytes)

	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if err := writeNewFile(path, pemBytes, 0o600); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	if err := writeNewFile(pubPath, authorizedLine(sshPub, comment), 0o644); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return sshPub, nil
}

// authorizedLine formats key as one authorized_keys / .pub line.
func authorizedLine(key ssh.PublicKey, comment string) []byte {
	line := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(key), []byte{'\n'})
	if comment != "" {
		line = append(line, ' ')
		line = append(line, comment...)
	}
	return append(line, '\n')
}

// writeNewFile creates path (failing if it exists) with exactly perm.
func writeNewFile(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%q already exists: remove it or choose another file: %w", path, err)
		}
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm) // exact mode, whatever the umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// checkPerm refuses files whose permission bits intersect forbidden.
func checkPerm(path string, fi fs.FileInfo, forbidden fs.FileMode, fix string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%q is not a regular file", path)
	}
	if fi.Mode().Perm()&forbidden != 0 {
		return &PermissionError{Path: path, Mode: fi.Mode().Perm(), Fix: fix + " " + shellQuote(path)}
	}
	return nil
}

// readChecked reads the file at path (at most maxFileSize bytes) after
// checking its permissions on the open file. os.ErrNotExist is passed
// through wrapped.
func readChecked(path string, forbidden fs.FileMode, fix string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkPerm(path, fi, forbidden, fix); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%q is larger than %d MiB", path, maxFileSize>>20)
	}
	return data, nil
}

// shellQuote quotes s for a POSIX shell if it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("/._-~+=:,@%", r)))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// LoadSigner loads a private key (OpenSSH or PEM format) from path. The file
// must not be accessible by group or others (*PermissionError otherwise).
// Passphrase-protected keys are refused with ErrPassphrase: load them into
// ssh-agent instead. If path+"-cert.pub" holds a certificate for this key,
// the returned signer presents that certificate (ssh.NewCertSigner); a
// certificate for another key is ignored, as OpenSSH does.
func LoadSigner(path string) (ssh.Signer, error) {
	return LoadSignerWithPassphrase(path, nil)
}

// LoadSignerWithPassphrase is LoadSigner for a key protected by passphrase
// (nil: the key must be unencrypted). A wrong passphrase yields an error
// wrapping ErrPassphrase and x509.IncorrectPasswordError.
func LoadSignerWithPassphrase(path string, passphrase []byte) (ssh.Signer, error) {
	data, err := readChecked(path, 0o077, "chmod 600")
	if err != nil {
		var pe *PermissionError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, fmt.Errorf("load private key: %w", err)
	}
	defer clear(data)
	var signer ssh.Signer
	if passphrase != nil {
		signer, err = ssh.ParsePrivateKeyWithPassphrase(data, passphrase)
		if errors.Is(err, x509.IncorrectPasswordError) {
			return nil, newErrorKinds([]error{ErrPassphrase, err}, "private key %q: wrong passphrase", path)
		}
	} else {
		signer, err = ssh.ParsePrivateKey(data)
	}
	if err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			q := shellQuote(path)
			return nil, newError(ErrPassphrase,
				"private key %q is protected by a passphrase: add it to ssh-agent with `ssh-add %s` and cachetun will use the agent (or remove the passphrase with `ssh-keygen -p -f %s`)",
				path, q, q)
		}
		return nil, fmt.Errorf("load private key %q: %w: it must be an unencrypted OpenSSH or PEM private key", path, err)
	}

	certPath := path + "-cert.pub"
	certData, err := os.ReadFile(certPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return signer, nil
	case err != nil:
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(certData)
	if err != nil {
		return nil, fmt.Errorf("load certificate %q: %w: remove it or replace it with a valid certificate", certPath, err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok || !bytes.Equal(cert.Key.Marshal(), signer.PublicKey().Marshal()) {
		return signer, nil
	}
	cs, err := ssh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, fmt.Errorf("load certificate %q: %w", certPath, err)
	}
	return cs, nil
}

// PrivateKeyPublic returns the public half of the private key file at
// path without decrypting it: OpenSSH keys carry it in clear, and for other
// formats path+".pub" is read. The file's permissions are checked as in
// LoadSigner.
func PrivateKeyPublic(path string) (ssh.PublicKey, error) {
	data, err := readChecked(path, 0o077, "chmod 600")
	if err != nil {
		return nil, err
	}
	defer clear(data)
	k, err := ssh.ParseRawPrivateKey(data)
	var pm *ssh.PassphraseMissingError
	switch {
	case err == nil:
		s, err := ssh.NewSignerFromKey(k)
		if err != nil {
			return nil, fmt.Errorf("load private key %q: %w", path, err)
		}
		return s.PublicKey(), nil
	case errors.As(err, &pm) && pm.PublicKey != nil:
		return pm.PublicKey, nil
	}
	pubData, perr := os.ReadFile(path + ".pub")
	if perr != nil {
		return nil, fmt.Errorf("public key of %q: %w", path, perr)
	}
	pub, _, _, _, perr := ssh.ParseAuthorizedKey(pubData)
	if perr != nil {
		return nil, fmt.Errorf("public key %q: %w", path+".pub", perr)
	}
	return pub, nil
}

// agentConn is the process-wide ssh-agent connection. Signers obtained from
// the agent sign through it, so it stays open for the process lifetime.
var agentConn struct {
	mu     sync.Mutex // guards the following
	sock   string
	conn   net.Conn
	client agent.ExtendedAgent
}

// AgentSigners returns the keys (and certificates) held by the ssh-agent at
// $SSH_AUTH_SOCK, or (nil, nil) when SSH_AUTH_SOCK is unset. The agent
// connection is kept open for the lifetime of the process because the
// returned signers need it.
func AgentSigners() ([]ssh.Signer, error) {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, nil
	}
	agentConn.mu.Lock()
	defer agentConn.mu.Unlock()

	var lastErr error
	for range 2 { // a dead connection (agent restarted) is redialled once
		if agentConn.conn == nil || agentConn.sock != sock {
			// A connection to a previous socket is left open: signers
			// handed out earlier may still use it.
			c, err := net.DialTimeout("unix", sock, 5*time.Second)
			if err != nil {
				return nil, fmt.Errorf("connect to ssh-agent at %q (SSH_AUTH_SOCK): %w: start ssh-agent or unset SSH_AUTH_SOCK", sock, err)
			}
			agentConn.sock, agentConn.conn, agentConn.client = sock, c, agent.NewClient(c)
		}
		signers, err := agentConn.client.Signers()
		if err == nil {
			return signers, nil
		}
		lastErr = err
		agentConn.conn.Close()
		agentConn.conn, agentConn.client = nil, nil
	}
	return nil, fmt.Errorf("list ssh-agent keys at %q (SSH_AUTH_SOCK): %w: restart ssh-agent or unset SSH_AUTH_SOCK", sock, lastErr)
}

// Fingerprint returns the SHA256 fingerprint of k, as OpenSSH prints it
// ("SHA256:..."). For a certificate it is the fingerprint of the
// certificate blob; Identity.Fingerprint uses the certified key instead.
func Fingerprint(k ssh.PublicKey) string {
	return ssh.FingerprintSHA256(k)
}

// ExpandHome replaces a leading "~/" (or a lone "~") by the user's home
// directory ($HOME). Other paths are returned unchanged.
func ExpandHome(path string) string {
	if path != "~" && !strings.HasPrefix(path, "~/") {
		return path
	}
	home := os.Getenv("HOME")
	if home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return path
		}
	}
	return filepath.Join(home, path[1:])
}
