package client

import (
	"errors"
	"strings"
	"testing"
	"unicode"

	"github.com/cachetun/cachetun/control"
)

// FuzzRevokedError: a FrameRevoked payload is bytes the gateway sends.
// Whatever they are, the result is ErrRevoked with one line of printable
// text of bounded length, and the hint is never empty.
func FuzzRevokedError(f *testing.F) {
	for _, seed := range []string{
		`{"code":"unknown_key","error":"key SHA256:abc is no longer authorized on the gateway","hint":"ask"}`,
		`{"code":"key_expired","error":"key SHA256:abc expired at 2026-12-01T00:00:00Z"}`, // no hint
		`{}`,                                    // no reason
		``,                                      // empty payload
		`not json`,                              // garbage
		`{"error":"line1\nline2\r\x1b[31mred"}`, // control characters
		`{"error":"` + strings.Repeat("a", 5000) + `"}`, // long
		`{"error":"\u0000\ufffd"}`,                      // NUL and replacement rune
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		err := revokedError(payload)
		if !errors.Is(err, ErrRevoked) {
			t.Fatalf("not ErrRevoked: %v", err)
		}
		var ce *control.Error
		if !errors.As(err, &ce) || ce.Hint == "" {
			t.Fatalf("no hint: %#v", err)
		}
		msg := err.Error()
		if len(msg) > len(ErrRevoked.Error())+2+1024 {
			t.Fatalf("message of %d bytes", len(msg))
		}
		for _, s := range []string{msg, ce.Hint} {
			if strings.IndexFunc(s, unicode.IsControl) >= 0 {
				t.Fatalf("control character in %q", s)
			}
		}
	})
}
