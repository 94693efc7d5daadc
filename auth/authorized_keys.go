package auth

import (
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/crypto/ssh"
)

// Identity is an authenticated client: who it is and what it may reach.
type Identity struct {
	Key         ssh.PublicKey    // the key that authenticated (for certs: the cert's Key)
	Cert        *ssh.Certificate // non-nil when a user certificate was used
	Fingerprint string           // of Key
	Comment     string           // authorized_keys comment, or cert KeyId
	Targets     []string         // nil = every target
	Expires     time.Time        // zero = never
}

// Allows reports whether the identity may use target.
func (id *Identity) Allows(target string) bool {
	if id == nil {
		return false
	}
	if id.Targets == nil {
		return true
	}
	return slices.Contains(id.Targets, target)
}

// String returns "SHA256:... (comment)" for logs. It holds no secrets;
// control characters in the comment are escaped.
func (id *Identity) String() string {
	if id == nil {
		return "<nil>"
	}
	c := sanitize(id.Comment)
	if id.Cert != nil {
		c = fmt.Sprintf("%s, cert serial %d from CA %s", c, id.Cert.Serial, Fingerprint(id.Cert.SignatureKey))
	}
	if c == "" {
		return id.Fingerprint
	}
	return id.Fingerprint + " (" + c + ")"
}

// sanitize makes s safe for a single log line.
func sanitize(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) < 0 {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// authorizedKey is one parsed authorized_keys line.
type authorizedKey struct {
	line    int
	key     ssh.PublicKey
	blob    []byte // key.Marshal()
	comment string
	ca      bool           // cert-authority
	targets []string       // nil = every target
	from    sourcePatterns // nil = any source
	expires time.Time      // zero = never
}

// AuthorizedKeys is a parsed authorized_keys file. It is immutable and safe
// for concurrent use.
type AuthorizedKeys struct {
	name string
	keys []authorizedKey
}

// Len returns the number of key lines (plain keys and CAs).
func (a *AuthorizedKeys) Len() int {
	if a == nil {
		return 0
	}
	return len(a.keys)
}

// Name returns the file name given to ParseAuthorizedKeys.
func (a *AuthorizedKeys) Name() string {
	if a == nil {
		return ""
	}
	return a.name
}

// LoadAuthorizedKeys reads and parses an authorized_keys file. A file
// writable by group or others is refused with *PermissionError; being
// readable is fine.
func LoadAuthorizedKeys(path string) (*AuthorizedKeys, error) {
	data, err := readChecked(path, 0o022, "chmod go-w")
	if err != nil {
		var pe *PermissionError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, fmt.Errorf("load authorized keys: %w", err)
	}
	return ParseAuthorizedKeys(data, path)
}

// ParseAuthorizedKeys parses authorized_keys data in OpenSSH format; name is
// used in messages. Any malformed line is an error (*ParseError) naming name
// and the line number: a typo must not silently widen or drop access.
//
// Options understood: targets="a,b", from="pattern,...",
// expiry-time="YYYYMMDD[HHMM[SS]]" (UTC) and cert-authority. OpenSSH
// options that restrict sessions, commands or forwarding (no-pty, restrict,
// permitopen="..." ...) are accepted and ignored: cachetun limits clients
// with targets= instead. principals= and verify-required, which cachetun
// cannot honour, and unknown options are errors.
func ParseAuthorizedKeys(data []byte, name string) (*AuthorizedKeys, error) {
	a := &AuthorizedKeys{name: name}
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		var line []byte
		line, data, _ = bytes.Cut(data, []byte{'\n'})
		line = bytes.Trim(line, " \t\r")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		e, err := parseAuthorizedLine(line)
		if err != nil {
			return nil, &ParseError{Name: name, Line: lineNo, Err: err}
		}
		e.line = lineNo
		a.keys = append(a.keys, e)
	}
	return a, nil
}

// ignoredFlags are OpenSSH options without a value that do not concern a
// tunnel gateway. touch-required is enforced anyway (x/crypto checks the
// FIDO user-presence flag); no-touch-required only relaxes, so ignoring it is
// stricter.
var ignoredFlags = map[string]bool{
	"agent-forwarding": true, "no-agent-forwarding": true,
	"x11-forwarding": true, "no-x11-forwarding": true,
	"port-forwarding": true, "no-port-forwarding": true,
	"pty": true, "no-pty": true,
	"user-rc": true, "no-user-rc": true,
	"restrict":       true,
	"touch-required": true, "no-touch-required": true,
}

// ignoredValued are OpenSSH options with a value that do not concern a
// tunnel gateway.
var ignoredValued = map[string]bool{
	"command": true, "environment": true, "permitopen": true,
	"permitlisten": true, "tunnel": true,
}

func parseAuthorizedLine(line []byte) (authorizedKey, error) {
	var e authorizedKey
	key, comment, options, _, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		return e, fmt.Errorf("cannot parse key line (%v): want [options] key-type base64-key [comment]", err)
	}
	e.key, e.blob, e.comment = key, key.Marshal(), comment

	seen := map[string]bool{}
	for _, opt := range options {
		name, raw, hasValue := strings.Cut(opt, "=")
		lname := strings.ToLower(name)
		var value string
		if hasValue {
			if value, err = unquoteOption(raw); err != nil {
				return e, fmt.Errorf("option %s: %w", name, err)
			}
		}
		switch lname {
		case "cert-authority", "targets", "from", "expiry-time":
			if seen[lname] {
				return e, fmt.Errorf("option %s appears twice: merge the values into one", lname)
			}
			seen[lname] = true
		}
		needValue := func() error {
			if !hasValue {
				return fmt.Errorf("option %s needs a value: write %s=\"...\"", name, lname)
			}
			return nil
		}
		switch {
		case lname == "cert-authority":
			if hasValue {
				return e, errors.New("option cert-authority takes no value")
			}
			e.ca = true
		case lname == "targets":
			if err := needValue(); err != nil {
				return e, err
			}
			if e.targets, err = parseTargets(value); err != nil {
				return e, err
			}
		case lname == "from":
			if err := needValue(); err != nil {
				return e, err
			}
			if e.from, err = parseSourcePatterns(value, true); err != nil {
				return e, fmt.Errorf("option from=%q: %w", value, err)
			}
		case lname == "expiry-time":
			if err := needValue(); err != nil {
				return e, err
			}
			if e.expires, err = parseExpiry(value); err != nil {
				return e, err
			}
		case lname == "principals":
			return e, errors.New(`option principals= is not supported: cachetun uses certificate principals as target names, restrict them with targets="..."`)
		case lname == "verify-required":
			return e, errors.New("option verify-required is not supported: remove it")
		case ignoredFlags[lname]:
			if hasValue {
				return e, fmt.Errorf("option %s takes no value", name)
			}
		case ignoredValued[lname]:
			if err := needValue(); err != nil {
				return e, err
			}
		default:
			return e, fmt.Errorf("unknown option %q: cachetun understands targets=, from=, expiry-time= and cert-authority", name)
		}
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return e, errors.New("certificates do not belong in authorized_keys: add the CA's public key with the cert-authority option")
	}
	return e, nil
}

// unquoteOption returns the content of a double-quoted option value, with
// \" unescaped as OpenSSH does.
func unquoteOption(raw string) (string, error) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return "", fmt.Errorf("value %s must be in double quotes", raw)
	}
	in := raw[1 : len(raw)-1]
	var b strings.Builder
	for i := 0; i < len(in); i++ {
		switch {
		case in[i] == '\\' && i+1 < len(in) && in[i+1] == '"':
			b.WriteByte('"')
			i++
		case in[i] == '"':
			return "", fmt.Errorf("value %s has an unescaped quote", raw)
		default:
			b.WriteByte(in[i])
		}
	}
	return b.String(), nil
}

// parseTargets parses a targets= list; "*" means every target (nil).
func parseTargets(value string) ([]string, error) {
	targets := []string{}
	all := false
	for _, t := range strings.Split(value, ",") {
		t = strings.TrimSpace(t)
		switch {
		case t == "":
			return nil, fmt.Errorf("option targets=%q has an empty target name", value)
		case t == "*":
			all = true
		case !slices.Contains(targets, t):
			targets = append(targets, t)
		}
	}
	if all {
		return nil, nil
	}
	return targets, nil
}

// parseExpiry parses an expiry-time value: YYYYMMDD, YYYYMMDDHHMM or
// YYYYMMDDHHMMSS, in UTC, with an optional trailing "Z".
func parseExpiry(value string) (time.Time, error) {
	v := strings.TrimSuffix(value, "Z")
	var layout string
	switch len(v) {
	case 8:
		layout = "20060102"
	case 12:
		layout = "200601021504"
	case 14:
		layout = "20060102150405"
	}
	for _, c := range []byte(v) {
		if c < '0' || c > '9' {
			layout = ""
		}
	}
	if layout == "" {
		return time.Time{}, fmt.Errorf("option expiry-time=%q: want YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (UTC)", value)
	}
	t, err := time.ParseInLocation(layout, v, time.UTC)
	if err != nil {
		return time.Time{}, fmt.Errorf("option expiry-time=%q is not a valid date: %v", value, err)
	}
	return t, nil
}

// Authorize decides whether key (a plain key or an *ssh.Certificate) may
// connect from remote at now. It returns the Identity to attach to the
// session, or an error wrapping ErrUnknownKey, ErrKeyExpired,
// ErrSourceNotAllowed or ErrCertInvalid. A nil remote fails every from= and
// source-address restriction.
//
// When a key is listed on several lines, the first line whose restrictions
// pass is used, as OpenSSH does. Key bytes are compared in constant time.
func (a *AuthorizedKeys) Authorize(key ssh.PublicKey, remote net.IP, now time.Time) (*Identity, error) {
	if key == nil {
		return nil, newError(ErrUnknownKey, "no key was presented: the client must authenticate with a key")
	}
	name := a.Name()
	if cert, ok := key.(*ssh.Certificate); ok {
		return a.authorizeCert(cert, remote, now)
	}
	blob := key.Marshal()
	var (
		id       *Identity
		firstErr error
		isCA     bool
	)
	entries := a.entries()
	for i := range entries {
		e := &entries[i]
		if subtle.ConstantTimeCompare(e.blob, blob) != 1 {
			continue
		}
		if e.ca {
			isCA = true
			continue
		}
		if err := a.checkEntry(e, "key "+Fingerprint(key), remote, now); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if id == nil {
			id = &Identity{
				Key:         key,
				Fingerprint: Fingerprint(key),
				Comment:     e.comment,
				Targets:     slices.Clone(e.targets),
				Expires:     e.expires,
			}
		}
	}
	switch {
	case id != nil:
		return id, nil
	case firstErr != nil:
		return nil, firstErr
	case isCA:
		return nil, newError(ErrUnknownKey,
			"key %s is a cert-authority in %s and cannot log in itself: sign a user certificate with it (ssh-keygen -s) and connect with that",
			Fingerprint(key), name)
	}
	return nil, newError(ErrUnknownKey, "key %s is not in %s: add its .pub line there", Fingerprint(key), name)
}

// entries returns the parsed lines; a nil *AuthorizedKeys has none.
func (a *AuthorizedKeys) entries() []authorizedKey {
	if a == nil {
		return nil
	}
	return a.keys
}

// checkEntry applies an entry's expiry-time and from= restrictions.
func (a *AuthorizedKeys) checkEntry(e *authorizedKey, what string, remote net.IP, now time.Time) error {
	if !e.expires.IsZero() && !now.Before(e.expires) {
		return newError(ErrKeyExpired,
			"%s expired at %s (expiry-time on line %d of %s): renew it there or use another key",
			what, e.expires.UTC().Format(time.RFC3339), e.line, a.Name())
	}
	if e.from != nil {
		ip, ok := remoteAddr(remote)
		if !ok {
			return newError(ErrSourceNotAllowed,
				"%s is restricted by from=%q on line %d of %s and the remote address is unknown",
				what, e.from.String(), e.line, a.Name())
		}
		if !e.from.allows(ip) {
			return newError(ErrSourceNotAllowed,
				"%s may not connect from %s (from=%q on line %d of %s): connect from an allowed address or add this one there",
				what, ip, e.from.String(), e.line, a.Name())
		}
	}
	return nil
}

// certTime formats a certificate timestamp.
func certTime(v uint64) string {
	if v > math.MaxInt64 {
		return "forever"
	}
	return time.Unix(int64(v), 0).UTC().Format(time.RFC3339)
}

// authorizeCert authorizes a user certificate signed by a cert-authority
// entry.
func (a *AuthorizedKeys) authorizeCert(cert *ssh.Certificate, remote net.IP, now time.Time) (*Identity, error) {
	desc := fmt.Sprintf("certificate %q (serial %d) for key %s", sanitize(cert.KeyId), cert.Serial, Fingerprint(cert.Key))
	if cert.CertType != ssh.UserCert {
		return nil, newError(ErrCertInvalid, "%s is a host certificate: sign a user certificate (ssh-keygen -s without -h)", desc)
	}
	if cert.SignatureKey == nil || cert.Signature == nil {
		return nil, newError(ErrCertInvalid, "%s is not signed", desc)
	}
	caBlob := cert.SignatureKey.Marshal()
	caFP := Fingerprint(cert.SignatureKey)
	var cas []*authorizedKey
	entries := a.entries()
	for i := range entries {
		e := &entries[i]
		if subtle.ConstantTimeCompare(e.blob, caBlob) == 1 && e.ca {
			cas = append(cas, e)
		}
	}
	if len(cas) == 0 {
		return nil, newError(ErrUnknownKey,
			"%s is signed by CA %s, which is not a cert-authority in %s: add the CA's .pub line there with the cert-authority option",
			desc, caFP, a.Name())
	}
	if err := checkUserCert(cert, desc, remote, now); err != nil {
		return nil, err
	}

	all := slices.Contains(cert.ValidPrincipals, "*")
	var firstErr error
	for _, e := range cas {
		if err := a.checkEntry(e, "certificate authority "+caFP, remote, now); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		var targets []string
		switch {
		case all && e.targets == nil:
			targets = nil
		case all:
			targets = slices.Clone(e.targets)
		default:
			targets = []string{}
			for _, p := range cert.ValidPrincipals {
				if (e.targets == nil || slices.Contains(e.targets, p)) && !slices.Contains(targets, p) {
					targets = append(targets, p)
				}
			}
		}
		if targets != nil && len(targets) == 0 {
			if firstErr == nil {
				firstErr = newError(ErrCertInvalid,
					"none of the principals %q of %s is allowed by targets=%q on line %d of %s: sign the certificate for an allowed target or extend targets=",
					cert.ValidPrincipals, desc, strings.Join(e.targets, ","), e.line, a.Name())
			}
			continue
		}
		expires := e.expires
		if cert.ValidBefore != ssh.CertTimeInfinity && cert.ValidBefore <= math.MaxInt64 {
			if cb := time.Unix(int64(cert.ValidBefore), 0); expires.IsZero() || cb.Before(expires) {
				expires = cb
			}
		}
		return &Identity{
			Key:         cert.Key,
			Cert:        cert,
			Fingerprint: Fingerprint(cert.Key),
			Comment:     cert.KeyId,
			Targets:     targets,
			Expires:     expires,
		}, nil
	}
	return nil, firstErr
}

// checkUserCert checks what a certificate says about itself: principals,
// signature algorithm, validity window, critical options and the CA
// signature.
func checkUserCert(cert *ssh.Certificate, desc string, remote net.IP, now time.Time) error {
	if len(cert.ValidPrincipals) == 0 {
		return newError(ErrCertInvalid,
			"%s has no principals: sign it with -n TARGET[,TARGET...] (or -n '*' for every target)", desc)
	}
	if f := cert.Signature.Format; f == ssh.KeyAlgoRSA || f == ssh.InsecureKeyAlgoDSA {
		return newError(ErrCertInvalid,
			"%s is signed with %s (sha-1), which is refused: re-sign it with rsa-sha2-512 (ssh-keygen -s CA -t rsa-sha2-512)", desc, f)
	}
	unixNow := uint64(max(now.Unix(), 0))
	if unixNow < cert.ValidAfter {
		return newError(ErrCertInvalid,
			"%s is not valid before %s: check the clock or wait", desc, certTime(cert.ValidAfter))
	}
	if cert.ValidBefore != ssh.CertTimeInfinity && unixNow >= cert.ValidBefore {
		return newErrorKinds([]error{ErrCertInvalid, ErrKeyExpired},
			"%s expired at %s: get a new certificate from your CA", desc, certTime(cert.ValidBefore))
	}
	for opt, val := range cert.CriticalOptions {
		if opt != "source-address" {
			return newError(ErrCertInvalid,
				"%s has critical option %q, which cachetun does not support: issue a certificate without it", desc, opt)
		}
		ps, err := parseSourcePatterns(val, false)
		if err != nil {
			return newError(ErrCertInvalid, "%s has an invalid source-address %q: %v", desc, val, err)
		}
		ip, ok := remoteAddr(remote)
		if !ok || !ps.allows(ip) {
			from := "an unknown address"
			if ok {
				from = ip.String()
			}
			return newError(ErrSourceNotAllowed,
				"%s may only be used from %s, not from %s: connect from an allowed address or get another certificate", desc, val, from)
		}
	}
	checker := ssh.CertChecker{
		Clock:                    func() time.Time { return now },
		SupportedCriticalOptions: []string{"source-address"},
	}
	if err := checker.CheckCert(cert.ValidPrincipals[0], cert); err != nil {
		return newError(ErrCertInvalid, "%s is not valid: %v", desc, err)
	}
	return nil
}
