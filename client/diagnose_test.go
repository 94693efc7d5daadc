package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/cachetun/cachetun/control"
)

// FuzzClassify: classify reads the first bytes a server sent; whatever
// they are, it returns one of the kinds, and an SSH greeting is always
// recognised.
func FuzzClassify(f *testing.F) {
	for _, seed := range [][]byte{
		nil,
		[]byte("SSH-2.0-OpenSSH_9.6\r\n"),
		[]byte("SSH-2.0-cachetun_dev\r\n"),
		[]byte("+PONG\r\n"),
		[]byte("-NOAUTH Authentication required.\r\n"),
		[]byte("-ERR unknown command 'SSH-2.0-cachetun_dev'\r\n"),
		[]byte("ERROR\r\n"),
		[]byte("CLIENT_ERROR line format\r\n"),
		{0x15, 0x03, 0x03, 0x00, 0x02}, // TLS alert record
		{0x16, 0x03, 0x01, 0x02, 0x00}, // TLS handshake record
		[]byte("HTTP/1.1 400 Bad Request\r\n"),
		{0xff},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k := classify(b)
		if k < kindUnknown || k > kindOther {
			t.Fatalf("classify(%q) = %d, not a kind", b, k)
		}
		if strings.HasPrefix(string(b), "SSH-") && k != kindSSH {
			t.Fatalf("classify(%q) = %d, want kindSSH", b, k)
		}
		if len(b) == 0 && k != kindUnknown {
			t.Fatalf("classify(empty) = %d, want kindUnknown", k)
		}
	})
}

// TestExplainDial: each way a dial fails becomes the error class callers
// test with errors.Is, and a hint.
func TestExplainDial(t *testing.T) {
	addr := "127.0.0.1:4433"
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	cases := []struct {
		name       string
		transport  string
		err        error
		sawHostKey bool
		want       error
		hint       string
	}{
		{"dns", TransportQUIC, &net.DNSError{Err: "no such host", Name: "gw.example", IsNotFound: true}, false, ErrDNS, "check the host name"},
		{"refused", TransportTLS, refused, false, ErrRefused, "security group allows TCP 4433"},
		{"ssh greeting on tls", TransportTLS, tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake", RecordHeader: [5]byte{'S', 'S', 'H', '-', '2'}}, false, ErrWrongServer, "use --transport ssh"},
		{"redis on tls", TransportTLS, tls.RecordHeaderError{RecordHeader: [5]byte{'-', 'E', 'R', 'R', ' '}}, false, ErrWrongServer, "not the cache"},
		{"eof before greeting on ssh", TransportSSH, fmt.Errorf("ssh: handshake failed: %w", io.EOF), false, ErrWrongServer, "drop --transport ssh"},
		{"deadline on quic", TransportQUIC, context.DeadlineExceeded, false, ErrNoAnswer, "try --transport tls"},
		{"deadline on tls", TransportTLS, context.DeadlineExceeded, false, ErrNoAnswer, "security group"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := explainDial(tc.transport, addr, tc.err, tc.sawHostKey)
			if !errors.Is(err, tc.want) {
				t.Fatalf("explainDial = %v, want errors.Is %v", err, tc.want)
			}
			var ce *control.Error
			if !errors.As(err, &ce) || !strings.Contains(ce.Hint, tc.hint) {
				t.Fatalf("hint of %v = %q, want it to contain %q", err, hintOf(err), tc.hint)
			}
		})
	}
	// EOF after the host key is not a wrong port: no class is guessed.
	err := explainDial(TransportSSH, addr, io.EOF, true)
	if errors.Is(err, ErrWrongServer) {
		t.Fatalf("EOF after the host key called a wrong port: %v", err)
	}
	// A DNS failure is not worth falling back from QUIC to TLS; no answer is.
	if fallbackWorthy(explainDial(TransportQUIC, addr, &net.DNSError{Err: "no such host", Name: "x"}, false)) {
		t.Error("DNS failure falls back to tls")
	}
	if !fallbackWorthy(explainDial(TransportQUIC, addr, context.DeadlineExceeded, false)) {
		t.Error("QUIC timeout does not fall back to tls")
	}
}

func hintOf(err error) string {
	var ce *control.Error
	if errors.As(err, &ce) {
		return ce.Hint
	}
	return ""
}
