package auth

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
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
	// PermitOpen is the permitopen= filter of the authorized_keys line (for
	// certificates: of the cert-authority line); nil = no filter. A stream
	// must pass it on top of Targets: see MayOpen.
	PermitOpen []Permit
	// permitSource names the line PermitOpen comes from, for messages.
	permitSource string
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

// MayOpen checks the permitopen= filter for a stream to node index of
// target, whose address is addr (host:port; index is -1 when the node has
// no index in the current topology). It returns nil when the identity has
// no filter or an entry permits the node, else an error wrapping
// ErrNotPermitted that names the filter and its line. Targets= is checked
// separately (Allows).
func (id *Identity) MayOpen(target string, index int, addr string) error {
	if id == nil {
		return newError(ErrNotPermitted, "no identity")
	}
	if id.PermitOpen == nil {
		return nil
	}
	for _, p := range id.PermitOpen {
		if p.Matches(target, index, addr) {
			return nil
		}
	}
	return newError(ErrNotPermitted,
		"key %s may not open %s (node %s of target %q): permitopen=%q on %s allows only that: ask the operator to extend permitopen= there",
		id.Fingerprint, sanitize(addr), nodeLabel(index), target, permitList(id.PermitOpen), id.permitSource)
}

func nodeLabel(index int) string {
	if index < 0 {
		return "seed"
	}
	return strconv.Itoa(index)
}

// Permit is one entry of a permitopen= option: Host is "*" (any), a target
// name, "N.TARGET" (node N of a target) or a node's host (IP address or
// name); Port is "*" (any) or a decimal port, compared with the node's port.
type Permit struct {
	Host string
	Port string
}

// String returns the entry as written in authorized_keys.
func (p Permit) String() string {
	if strings.Contains(p.Host, ":") {
		return "[" + p.Host + "]:" + p.Port
	}
	return p.Host + ":" + p.Port
}

// Matches reports whether p permits node index of target at addr: the
// port must match addr's, and the host must be "*", the target's name,
// "INDEX.TARGET", or addr's host (IP addresses compared as addresses, names
// without regard to case). What is compared is always the node the gateway
// would dial, however the client named it.
func (p Permit) Matches(target string, index int, addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if p.Port != "*" && p.Port != port {
		return false
	}
	switch {
	case p.Host == "*", target != "" && p.Host == target:
		return true
	}
	if n, t, ok := strings.Cut(p.Host, "."); ok && t == target && index >= 0 && isDigits(n) {
		if i, err := strconv.Atoi(n); err == nil && i == index {
			return true
		}
	}
	pa, err1 := netip.ParseAddr(p.Host)
	ha, err2 := netip.ParseAddr(host)
	if err1 == nil && err2 == nil {
		return pa.Unmap() == ha.Unmap().WithZone("")
	}
	return strings.EqualFold(p.Host, host)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func permitList(ps []Permit) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
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
	// denied is the option that took port forwarding away ("restrict" or
	// "no-port-forwarding"), empty when forwarding is allowed. Options are
	// applied in order, as OpenSSH does: restrict,port-forwarding allows.
	denied     string
	permitOpen []Permit // nil = no permitopen= filter
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
// Options fail closed. Understood and enforced: targets="a,b",
// from="pattern,...", expiry-time="YYYYMMDD[HHMM[SS]]" (UTC),
// cert-authority, permitopen="host:port,..." (repeatable; the entries
// accumulate), restrict, no-port-forwarding and port-forwarding (applied in
// order: restrict or no-port-forwarding deny the key, a later
// port-forwarding allows it again) and touch-required (always enforced).
// no-pty, no-agent-forwarding, no-X11-forwarding and no-user-rc are
// accepted: they deny what cachetun never offers, so they hold by
// construction. Every other option, the OpenSSH ones that cachetun cannot
// honour (command=, environment=, tunnel=, permitlisten=, principals=,
// verify-required, no-touch-required, agent-forwarding, X11-forwarding, pty,
// user-rc) and unknown ones alike, makes the file an error that names the
// line and the option.
func ParseAuthorizedKeys(data []byte, name string) (*AuthorizedKeys, error) {
	a, errs := CheckAuthorizedKeys(data, name)
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return a, nil
}

// moot are OpenSSH options that deny something cachetun never offers (a
// terminal, agent or X11 forwarding, ~/.ssh/rc): the restriction holds by
// construction, so they are accepted.
var moot = map[string]bool{
	"no-pty": true, "no-agent-forwarding": true, "no-x11-forwarding": true, "no-user-rc": true,
}

// unsupported are the OpenSSH options that cachetun cannot honour, with
// why. Each fails the load: ignoring one could grant what the operator
// meant to withhold.
var unsupported = map[string]string{
	"command":           "cachetun runs no commands, so a key limited to a command must not get a tunnel",
	"environment":       "cachetun sets no environment",
	"tunnel":            "cachetun offers no tun/tap forwarding",
	"permitlisten":      "cachetun offers no remote forwarding (ssh -R)",
	"principals":        "cachetun uses certificate principals as target names; restrict them with targets=\"...\"",
	"verify-required":   "cachetun does not check FIDO user verification",
	"no-touch-required": "cachetun always requires the FIDO touch",
	"agent-forwarding":  "cachetun offers no agent forwarding",
	"x11-forwarding":    "cachetun offers no X11 forwarding",
	"pty":               "cachetun offers no terminal",
	"user-rc":           "cachetun runs no ~/.ssh/rc",
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
		case lname == "permitopen":
			if err := needValue(); err != nil {
				return e, err
			}
			ps, err := parsePermitOpen(value)
			if err != nil {
				return e, fmt.Errorf("option permitopen=%q: %w", value, err)
			}
			e.permitOpen = append(e.permitOpen, ps...)
		case lname == "restrict" || lname == "no-port-forwarding" || lname == "port-forwarding" || lname == "touch-required" || moot[lname]:
			if hasValue {
				return e, fmt.Errorf("option %s takes no value", name)
			}
			switch lname {
			case "restrict", "no-port-forwarding":
				e.denied = lname
			case "port-forwarding":
				e.denied = ""
			}
		case unsupported[lname] != "":
			shown := name
			if hasValue {
				shown += "="
			}
			return e, fmt.Errorf("option %s is not supported: %s; remove it from this line, or give cachetun a key line of its own", shown, unsupported[lname])
		default:
			return e, fmt.Errorf("unknown option %q: cachetun understands targets=, from=, expiry-time=, permitopen=, cert-authority, restrict, no-port-forwarding and port-forwarding", name)
		}
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return e, errors.New("certificates do not belong in authorized_keys: add the CA's public key with the cert-authority option")
	}
	return e, nil
}

// parsePermitOpen parses a permitopen= value: comma-separated host:port
// entries ([v6]:port for IPv6 addresses); host may be "*", port "*".
// OpenSSH takes one entry per option and repeats the option; cachetun
// takes both forms.
func parsePermitOpen(value string) ([]Permit, error) {
	var ps []Permit
	for _, raw := range strings.Split(value, ",") {
		entry := strings.TrimSpace(raw)
		if entry == "" {
			return nil, errors.New("empty entry: want host:port")
		}
		host, port, err := net.SplitHostPort(entry)
		if err != nil {
			return nil, fmt.Errorf("entry %q is not host:port (write IPv6 addresses as [addr]:port, any port as host:*)", entry)
		}
		if host == "" || strings.IndexFunc(host, func(r rune) bool { return r <= ' ' || r > '~' || r == '/' }) >= 0 {
			return nil, fmt.Errorf("entry %q has an invalid host: want a target name, N.TARGET, an address or *", entry)
		}
		if port != "*" {
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 || !isDigits(port) {
				return nil, fmt.Errorf("entry %q has an invalid port: want 1-65535 or *", entry)
			}
		}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() != "" {
				return nil, fmt.Errorf("entry %q has an IPv6 zone: remove %%%s", entry, a.Zone())
			}
			host = a.Unmap().String()
		}
		ps = append(ps, Permit{Host: host, Port: port})
	}
	return ps, nil
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
		what := "key " + Fingerprint(key)
		if err := a.checkEntry(e, what, remote, now); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		// The first line that passes decides, restrictions included.
		if err := a.checkForwarding(e, what); err != nil {
			return nil, err
		}
		return &Identity{
			Key:          key,
			Fingerprint:  Fingerprint(key),
			Comment:      e.comment,
			Targets:      slices.Clone(e.targets),
			Expires:      e.expires,
			PermitOpen:   slices.Clone(e.permitOpen),
			permitSource: a.lineName(e),
		}, nil
	}
	switch {
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

// lineName returns "line N of authorized_keys" for messages; the file's
// path is not told to clients.
func (a *AuthorizedKeys) lineName(e *authorizedKey) string {
	return fmt.Sprintf("line %d of authorized_keys", e.line)
}

// checkForwarding refuses an entry whose options took port forwarding
// away: cachetun only forwards ports, so the key may not use it at all.
func (a *AuthorizedKeys) checkForwarding(e *authorizedKey, what string) error {
	if e.denied == "" {
		return nil
	}
	return newError(ErrKeyRestricted,
		"%s is restricted (%s) on %s: cachetun only forwards ports, which that line forbids: ask the operator to add port-forwarding after %s there, or to give the key a line of its own",
		what, e.denied, a.lineName(e), e.denied)
}

// checkEntry applies an entry's expiry-time and from= restrictions.
func (a *AuthorizedKeys) checkEntry(e *authorizedKey, what string, remote net.IP, now time.Time) error {
	if !e.expires.IsZero() && !now.Before(e.expires) {
		return newError(ErrKeyExpired,
			"%s expired at %s (expiry-time on line %d of %s)",
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

// extPortForwarding is the user-certificate extension that permits port
// forwarding.
const extPortForwarding = "permit-port-forwarding"

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
		if err := a.checkForwarding(e, "certificate authority "+caFP); err != nil {
			return nil, err
		}
		expires := e.expires
		if cert.ValidBefore != ssh.CertTimeInfinity && cert.ValidBefore <= math.MaxInt64 {
			if cb := time.Unix(int64(cert.ValidBefore), 0); expires.IsZero() || cb.Before(expires) {
				expires = cb
			}
		}
		return &Identity{
			Key:          cert.Key,
			Cert:         cert,
			Fingerprint:  Fingerprint(cert.Key),
			Comment:      cert.KeyId,
			Targets:      targets,
			Expires:      expires,
			PermitOpen:   slices.Clone(e.permitOpen),
			permitSource: a.lineName(e),
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
	if f := cert.Signature.Format; f == ssh.KeyAlgoRSA || f == keyAlgoDSA {
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
	opts := slices.Sorted(maps.Keys(cert.CriticalOptions))
	for _, opt := range opts {
		val := cert.CriticalOptions[opt]
		switch opt {
		case "source-address":
		case "force-command":
			return newError(ErrCertInvalid,
				"%s has critical option force-command=%q: cachetun runs no commands, so a certificate limited to one is refused: ask your CA for a certificate without -O force-command", desc, sanitize(val))
		default:
			return newError(ErrCertInvalid,
				"%s has critical option %q, which cachetun does not support: issue a certificate without it", desc, sanitize(opt))
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
	// As OpenSSH: a certificate grants port forwarding only with this
	// extension (ssh-keygen adds it unless -O clear or -O
	// no-port-forwarding).
	if _, ok := cert.Extensions[extPortForwarding]; !ok {
		return newErrorKinds([]error{ErrKeyRestricted, ErrCertInvalid},
			"%s lacks the %s extension (issued with ssh-keygen -O clear or -O no-port-forwarding): cachetun only forwards ports: ask your CA for a certificate with -O permit-port-forwarding", desc, extPortForwarding)
	}
	return nil
}
