package auth

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyChecker pins server host keys in an OpenSSH known_hosts file, the
// same entry for every transport. Verification is done by
// golang.org/x/crypto/ssh/knownhosts: plain and hashed host names, [host]:port
// entries, negation, @cert-authority and @revoked lines.
//
// The file is re-read on every check, so entries added by another process
// (or by AcceptNew) are seen at once. A HostKeyChecker is safe for concurrent
// use.
type HostKeyChecker struct {
	// Path is the known_hosts file; a leading "~/" is expanded. Messages
	// show it as given.
	Path string
	// AcceptNew pins the key of a host that has no entry yet (trust on
	// first use). A changed key is never accepted.
	AcceptNew bool
}

// appendMu serialises accept-new appends within the process.
var appendMu sync.Mutex

// placeholderRemote is handed to knownhosts, which insists on a remote
// address that splits into host and port even though it matches on the
// host name we always pass.
var placeholderRemote net.Addr = &net.TCPAddr{IP: net.IPv4zero}

// HostKeyCallback returns Check as an ssh.HostKeyCallback for x/crypto/ssh
// clients. The hostname x/crypto passes is the address given to Dial.
func (c *HostKeyChecker) HostKeyCallback() ssh.HostKeyCallback {
	return c.Check
}

// Check verifies key for hostport ("host:port"; if empty, remote.String() is
// used). It returns nil if known_hosts has key for the host, or a host
// certificate signed by a CA trusted for the host (@cert-authority; the
// certificate must name the host, without port, as a principal and be
// within its validity window).
//
// A host with no entry yields *UnknownHostError, unless AcceptNew is set:
// then the key is appended to Path (directory 0700 and file 0600 are created
// if missing) and Check returns nil. A host with other keys yields
// *HostKeyMismatchError, whatever AcceptNew says. A @revoked key yields an
// error wrapping ErrHostKeyRevoked, an invalid certificate from a trusted CA
// one wrapping ErrCertInvalid. A certificate from a CA not trusted for the
// host is judged by its plain key, as OpenSSH does.
func (c *HostKeyChecker) Check(hostport string, remote net.Addr, key ssh.PublicKey) error {
	if key == nil {
		return errors.New("check host key: no key")
	}
	if hostport == "" && remote != nil {
		hostport = remote.String()
	}
	addr, err := canonicalHostPort(hostport)
	if err != nil {
		return err
	}
	db, err := c.load()
	if err != nil {
		return err
	}
	err = db.verify(addr, key)
	var unknown *UnknownHostError
	if err == nil || !c.AcceptNew || !errors.As(err, &unknown) {
		return err
	}

	appendMu.Lock()
	defer appendMu.Unlock()
	// Another checker may have pinned the host meanwhile: decide again.
	if db, err = c.load(); err != nil {
		return err
	}
	err = db.verify(addr, key)
	if err == nil || !errors.As(err, &unknown) {
		return err
	}
	if err := appendKnownHost(ExpandHome(c.Path), unknown.Line); err != nil {
		return fmt.Errorf("pin host key for %s in %s: %w", addr, c.Path, err)
	}
	return nil
}

// HostKeyAlgorithms returns the host key algorithms that can verify against
// the entries known for hostport, for ssh.ClientConfig.HostKeyAlgorithms:
// certificate algorithms first if a CA is trusted for the host, then the
// algorithms of the pinned keys. Without this, x/crypto prefers ECDSA over
// the ed25519 key OpenSSH pins and the check fails with a mismatch. It
// returns nil if nothing is known for the host (or the file is unreadable),
// leaving the defaults in place.
func (c *HostKeyChecker) HostKeyAlgorithms(hostport string) []string {
	addr, err := canonicalHostPort(hostport)
	if err != nil {
		return nil
	}
	db, err := c.load()
	if err != nil {
		return nil
	}
	return db.algorithms(addr)
}

// canonicalHostPort validates hostport and returns it as host:port with a
// lower-case host. Only characters that can appear in host names and IP
// addresses are allowed, so the host can never inject patterns, markers or
// lines into known_hosts.
func canonicalHostPort(hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", newError(ErrInvalidHost, "invalid server address %q: want host:port", hostport)
	}
	host = strings.ToLower(host)
	if host == "" {
		return "", newError(ErrInvalidHost, "invalid server address %q: the host is empty", hostport)
	}
	for _, ch := range []byte(host) {
		if !('a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' || strings.IndexByte(".-_:%", ch) >= 0) {
			return "", newError(ErrInvalidHost, "invalid server address %q: the host contains %q", hostport, ch)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return "", newError(ErrInvalidHost, "invalid server address %q: the port must be a number from 1 to 65535", hostport)
	}
	return net.JoinHostPort(host, port), nil
}

// appendKnownHost appends line to the known_hosts file at path, creating
// the directory (0700) and the file (0600) if needed.
func appendKnownHost(path, line string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	buf := []byte(line + "\n")
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			buf = append([]byte{'\n'}, buf...)
		}
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// hostDB is one reading of a known_hosts file.
type hostDB struct {
	path     string // as configured, for messages
	callback ssh.HostKeyCallback
	cas      []hostCA       // @cert-authority lines
	caLines  map[int][]byte // line number -> CA key blob
}

// hostCA is a @cert-authority line.
type hostCA struct {
	line     int
	patterns []string
	key      ssh.PublicKey
}

// load reads the checker's known_hosts file. A missing file is an empty
// database. A file writable by group or others is refused.
func (c *HostKeyChecker) load() (*hostDB, error) {
	if c.Path == "" {
		return nil, errors.New("check host key: no known_hosts file configured")
	}
	path := ExpandHome(c.Path)
	db := &hostDB{path: c.Path, caLines: map[int][]byte{}}
	data, err := readChecked(path, 0o022, "chmod go-w")
	switch {
	case errors.Is(err, fs.ErrNotExist):
		db.callback, err = knownhosts.New()
		return db, err
	case err != nil:
		var pe *PermissionError
		if errors.As(err, &pe) {
			pe.Path = c.Path
			return nil, err
		}
		return nil, fmt.Errorf("read known hosts: %w", err)
	}
	if db.callback, err = knownhosts.New(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) { // removed since we read it
			db.callback, err = knownhosts.New()
			return db, err
		}
		return nil, fmt.Errorf("read known hosts %s: %w: fix or remove that line", c.Path, err)
	}
	db.parseCAs(data)
	return db, nil
}

// parseCAs records the @cert-authority lines of data, numbering lines as
// knownhosts does. knownhosts has already accepted data, so lines that do
// not parse here are skipped.
func (db *hostDB) parseCAs(data []byte) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := bytes.Trim(sc.Bytes(), " \t")
		marker, rest := nextWord(line)
		if marker != "@cert-authority" {
			continue
		}
		hosts, rest := nextWord(rest)
		typ, rest := nextWord(rest)
		b64, _ := nextWord(rest)
		blob, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			continue
		}
		key, err := ssh.ParsePublicKey(blob)
		if err != nil || key.Type() != typ {
			continue
		}
		db.cas = append(db.cas, hostCA{line: lineNo, patterns: strings.Split(hosts, ","), key: key})
		db.caLines[lineNo] = blob
	}
}

func nextWord(line []byte) (string, []byte) {
	i := bytes.IndexAny(line, " \t")
	if i < 0 {
		return string(line), nil
	}
	return string(line[:i]), bytes.Trim(line[i:], " \t")
}

// trustsCA reports whether a @cert-authority line for addr holds ca (or any
// CA, if ca is nil).
func (db *hostDB) trustsCA(addr string, ca ssh.PublicKey) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	for _, c := range db.cas {
		if (ca == nil || bytes.Equal(c.key.Marshal(), ca.Marshal())) && matchHostPatterns(c.patterns, host, port) {
			return true
		}
	}
	return false
}

// matchHostPatterns matches host:port against a known_hosts host field, as
// knownhosts does: comma-separated patterns, '!' negation, [host]:port for
// other ports than 22, * and ? wildcards, and |1|salt|hash hashed names.
func matchHostPatterns(patterns []string, host, port string) bool {
	matched := false
	for _, p := range patterns {
		if p == "" {
			continue
		}
		if p[0] == '|' {
			if matchHashed(p, knownhosts.Normalize(net.JoinHostPort(host, port))) {
				matched = true
			}
			continue
		}
		negate := p[0] == '!'
		if negate {
			p = p[1:]
		}
		ph, pp, err := net.SplitHostPort(p)
		if err != nil {
			if strings.HasPrefix(p, "[") {
				continue
			}
			ph, pp = p, "22"
		}
		if pp != port || !wildcardMatch(ph, host) {
			continue
		}
		if negate {
			return false
		}
		matched = true
	}
	return matched
}

func matchHashed(pattern, name string) bool {
	parts := strings.Split(pattern, "|")
	if len(parts) != 4 || parts[1] != "1" {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	want, err := base64.StdEncoding.DecodeString(parts[3])
	if err != nil {
		return false
	}
	mac := hmac.New(sha1.New, salt)
	mac.Write([]byte(name))
	return hmac.Equal(mac.Sum(nil), want)
}

// isCALine reports whether a knownhosts.KnownKey came from a @cert-authority
// line. knownhosts lists CA keys among a host's known keys; OpenSSH does not
// count them as pinned keys, and neither do we.
func (db *hostDB) isCALine(k knownhosts.KnownKey) bool {
	blob, ok := db.caLines[k.Line]
	return ok && bytes.Equal(blob, k.Key.Marshal())
}

// verify checks key for addr (canonical host:port).
func (db *hostDB) verify(addr string, key ssh.PublicKey) error {
	host, _, _ := net.SplitHostPort(addr)
	cert, isCert := key.(*ssh.Certificate)
	if isCert && cert.SignatureKey != nil {
		// A @revoked certified key or CA is refused whatever else holds.
		for _, k := range []ssh.PublicKey{cert.Key, cert.SignatureKey} {
			var re *knownhosts.RevokedError
			if err := db.callback(addr, placeholderRemote, k); errors.As(err, &re) {
				return db.revokedError(addr, re)
			}
		}
	}
	if isCert && cert.SignatureKey != nil && db.trustsCA(addr, cert.SignatureKey) {
		desc := fmt.Sprintf("host certificate %q (serial %d) for %s", sanitize(cert.KeyId), cert.Serial, addr)
		if len(cert.ValidPrincipals) == 0 {
			return newError(ErrCertInvalid, "%s has no principals: re-sign it with -n %s", desc, host)
		}
		if cert.Signature != nil && (cert.Signature.Format == ssh.KeyAlgoRSA || cert.Signature.Format == keyAlgoDSA) {
			return newError(ErrCertInvalid, "%s is signed with %s (sha-1), which is refused: re-sign it with rsa-sha2-512", desc, cert.Signature.Format)
		}
		if err := db.callback(addr, placeholderRemote, key); err != nil {
			var re *knownhosts.RevokedError
			if errors.As(err, &re) {
				return db.revokedError(addr, re)
			}
			return newError(ErrCertInvalid, "%s is not valid: %v: ask the server's operator for a valid certificate", desc, err)
		}
		return nil
	}
	if isCert {
		// Not from a CA trusted for this host: judge the certified key.
		key = cert.Key
	}

	err := db.callback(addr, placeholderRemote, key)
	if err == nil {
		return nil
	}
	var re *knownhosts.RevokedError
	if errors.As(err, &re) {
		return db.revokedError(addr, re)
	}
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return fmt.Errorf("check host key for %s: %w", addr, err)
	}
	mismatch := &HostKeyMismatchError{Host: addr, Path: db.path, Got: Fingerprint(key)}
	for _, k := range ke.Want {
		if db.isCALine(k) {
			continue
		}
		mismatch.Want = append(mismatch.Want, Fingerprint(k.Key))
		mismatch.Lines = append(mismatch.Lines, k.Line)
	}
	if len(mismatch.Want) > 0 {
		return mismatch
	}
	return &UnknownHostError{
		Host:        addr,
		Path:        db.path,
		Line:        knownhosts.Line([]string{knownhosts.Normalize(addr)}, key),
		Fingerprint: Fingerprint(key),
	}
}

func (db *hostDB) revokedError(addr string, re *knownhosts.RevokedError) error {
	return newError(ErrHostKeyRevoked,
		"host key %s for %s is marked @revoked on line %d of %s: do not connect; ask the server's operator for its new key",
		Fingerprint(re.Revoked.Key), addr, re.Revoked.Line, db.path)
}

// certAlgorithms are offered first for hosts with a trusted CA.
var certAlgorithms = []string{
	ssh.CertAlgoED25519v01,
	ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
	ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
}

// probeKey is a key no known_hosts file holds: checking it lists the keys
// known for a host (knownhosts.KeyError.Want).
var probeKey = sync.OnceValue(func() ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("auth: generate probe key: %v", err)) // crypto/rand never fails
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		panic(fmt.Sprintf("auth: probe key: %v", err))
	}
	return k
})

func (db *hostDB) algorithms(addr string) []string {
	var algos []string
	if db.trustsCA(addr, nil) {
		algos = append(algos, certAlgorithms...)
	}
	var ke *knownhosts.KeyError
	if err := db.callback(addr, placeholderRemote, probeKey()); errors.As(err, &ke) {
		for _, k := range ke.Want {
			if db.isCALine(k) {
				continue
			}
			switch t := k.Key.Type(); t {
			case ssh.KeyAlgoRSA:
				algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
			default:
				algos = append(algos, t)
			}
		}
	}
	var out []string
	for _, a := range algos {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
