package auth

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// Sentinel errors. Errors returned by this package wrap one or more of these
// together with a message that names the key, file or host and the fix;
// callers decide with errors.Is, never on the text.
var (
	// ErrUnknownKey: the key (or the CA that signed a certificate) is not in
	// authorized_keys.
	ErrUnknownKey = errors.New("key is not authorized")
	// ErrKeyExpired: the authorized_keys expiry-time has passed, or a
	// certificate's validity window has ended.
	ErrKeyExpired = errors.New("key has expired")
	// ErrSourceNotAllowed: the remote address is not allowed by from= or by
	// a certificate's source-address critical option.
	ErrSourceNotAllowed = errors.New("source address is not allowed")
	// ErrCertInvalid: a user or host certificate failed verification (type,
	// signature, validity window, principals, critical options).
	ErrCertInvalid = errors.New("certificate is not valid")
	// ErrKeyRestricted: the key's authorized_keys line (or its CA's line)
	// takes port forwarding away (restrict, no-port-forwarding), or a user
	// certificate lacks the permit-port-forwarding extension. cachetun only
	// forwards ports, so such a key cannot use it.
	ErrKeyRestricted = errors.New("key may not forward ports")
	// ErrNotPermitted: a stream's destination is outside the permitopen=
	// filter of the key's line.
	ErrNotPermitted = errors.New("destination is not permitted")
	// ErrBadSignature: a channel-binding proof does not verify.
	ErrBadSignature = errors.New("signature does not verify")
	// ErrSyntax: a line of authorized_keys could not be parsed.
	ErrSyntax = errors.New("syntax error")
	// ErrPermissions: a key or trust file is accessible by group or others.
	ErrPermissions = errors.New("file permissions are too open")
	// ErrPassphrase: a private key file is encrypted.
	ErrPassphrase = errors.New("private key is protected by a passphrase")
	// ErrUnknownHost: known_hosts has no key for the host.
	ErrUnknownHost = errors.New("host key is not known")
	// ErrHostKeyMismatch: known_hosts has other keys for the host.
	ErrHostKeyMismatch = errors.New("host key has changed")
	// ErrHostKeyRevoked: the host key is marked @revoked in known_hosts.
	ErrHostKeyRevoked = errors.New("host key is revoked")
	// ErrInvalidHost: a host:port string cannot be used as a known_hosts name.
	ErrInvalidHost = errors.New("invalid host address")
)

// authError carries a complete user-facing message and the sentinels it
// stands for.
type authError struct {
	msg   string
	kinds []error
}

func (e *authError) Error() string   { return e.msg }
func (e *authError) Unwrap() []error { return e.kinds }

// newError returns an error with the formatted message that wraps kind. If
// the arguments contain errors they are wrapped too (so errors.Is and
// errors.As see them), but the message is formatted with %v semantics.
func newError(kind error, format string, args ...any) error {
	return newErrorKinds([]error{kind}, format, args...)
}

func newErrorKinds(kinds []error, format string, args ...any) error {
	e := &authError{msg: fmt.Sprintf(format, args...), kinds: kinds}
	for _, a := range args {
		if err, ok := a.(error); ok {
			e.kinds = append(e.kinds, err)
		}
	}
	return e
}

// PermissionError reports a file whose permission bits let group or others
// read (private keys) or write (authorized_keys, known_hosts) it. Such files
// are refused, as OpenSSH does.
type PermissionError struct {
	Path string      // the file, as given
	Mode fs.FileMode // its permission bits
	Fix  string      // shell command that fixes it, e.g. "chmod 600 key"
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("permissions %04o for %q are too open: run %s", uint32(e.Mode.Perm()), e.Path, e.Fix)
}

// Unwrap makes errors.Is(err, ErrPermissions) true.
func (e *PermissionError) Unwrap() error { return ErrPermissions }

// ParseError reports a malformed line in an authorized_keys file.
type ParseError struct {
	Name string // file name, as given to ParseAuthorizedKeys
	Line int    // 1-based line number
	Err  error  // what is wrong
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s:%d: %v", e.Name, e.Line, e.Err)
}

// Unwrap makes errors.Is(err, ErrSyntax) true and exposes the cause.
func (e *ParseError) Unwrap() []error { return []error{ErrSyntax, e.Err} }

// UnknownHostError is returned by HostKeyChecker.Check when known_hosts has no
// key for the host and AcceptNew is off. Line is the known_hosts line that
// would pin the presented key.
type UnknownHostError struct {
	Host        string // host:port as checked
	Path        string // known_hosts file, as configured
	Line        string // line to add to Path
	Fingerprint string // of the presented key
}

func (e *UnknownHostError) Error() string {
	return fmt.Sprintf("host key for %s is not known: run with --accept-new-host-key or add this line to %s: %s",
		e.Host, e.Path, e.Line)
}

// Unwrap makes errors.Is(err, ErrUnknownHost) true.
func (e *UnknownHostError) Unwrap() error { return ErrUnknownHost }

// HostKeyMismatchError is returned by HostKeyChecker.Check when known_hosts
// holds other keys for the host. It is never accepted automatically: it is
// what a man-in-the-middle attack looks like.
type HostKeyMismatchError struct {
	Host  string   // host:port as checked
	Path  string   // known_hosts file, as configured
	Got   string   // fingerprint of the presented key
	Want  []string // fingerprints of the keys known for Host
	Lines []int    // known_hosts line numbers of Want, same order
}

func (e *HostKeyMismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "host key for %s has CHANGED: the server sent %s but %s has %s; "+
		"someone could be intercepting this connection (man-in-the-middle attack), "+
		"or the server's key was replaced: if the change is expected, remove ",
		e.Host, e.Got, e.Path, strings.Join(e.Want, ", "))
	switch len(e.Lines) {
	case 0:
		b.WriteString("the old entry")
	case 1:
		b.WriteString("line " + strconv.Itoa(e.Lines[0]))
	default:
		ls := make([]string, len(e.Lines))
		for i, l := range e.Lines {
			ls[i] = strconv.Itoa(l)
		}
		b.WriteString("lines " + strings.Join(ls, ", "))
	}
	fmt.Fprintf(&b, " from %s and connect again", e.Path)
	return b.String()
}

// Unwrap makes errors.Is(err, ErrHostKeyMismatch) true.
func (e *HostKeyMismatchError) Unwrap() error { return ErrHostKeyMismatch }
