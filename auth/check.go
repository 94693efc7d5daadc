package auth

import (
	"bytes"
	"time"

	"golang.org/x/crypto/ssh"
)

// Entry is what one line of authorized_keys says, for tools that check
// the file (cachetun server check).
type Entry struct {
	Line          int // 1-based
	Fingerprint   string
	Comment       string
	CertAuthority bool
	Targets       []string  // nil = every target
	Expires       time.Time // zero = never
	// Restricted is the option that refuses the key ("restrict" or
	// "no-port-forwarding"); empty when the key may forward ports.
	Restricted string
	PermitOpen []Permit // nil = no permitopen= filter
}

// Entries returns the key lines in file order.
func (a *AuthorizedKeys) Entries() []Entry {
	if a == nil {
		return nil
	}
	out := make([]Entry, len(a.keys))
	for i, k := range a.keys {
		out[i] = Entry{Line: k.line, Fingerprint: ssh.FingerprintSHA256(k.key), Comment: k.comment,
			CertAuthority: k.ca, Targets: k.targets, Expires: k.expires,
			Restricted: k.denied, PermitOpen: k.permitOpen}
	}
	return out
}

// CheckAuthorizedKeys parses data as ParseAuthorizedKeys does but goes on
// after a bad line: it returns the lines that parse and a *ParseError for
// every line that does not, so that a check names them all at once.
func CheckAuthorizedKeys(data []byte, name string) (*AuthorizedKeys, []*ParseError) {
	a := &AuthorizedKeys{name: name}
	var errs []*ParseError
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
			errs = append(errs, &ParseError{Name: name, Line: lineNo, Err: err})
			continue
		}
		e.line = lineNo
		a.keys = append(a.keys, e)
	}
	return a, errs
}
