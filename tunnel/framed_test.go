package tunnel

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// pipeStream is a Stream over one end of net.Pipe, for the tests of the
// in-band header and status layer without a transport under it.
type pipeStream struct{ net.Conn }

func (pipeStream) CloseWrite() error   { return nil }
func (p pipeStream) Abort()            { p.Close() }
func (pipeStream) WaitReadable() error { return ErrNoWait }
func (pipeStream) FlushOpen() error    { return nil }

// TestClientStream_StatusDeadline: a deadline that passes before any byte
// of the server's status leaves the stream usable (the next Read reads the
// status); one that cuts the status in the middle ends the stream, and
// every later Read fails rather than return the rest of the status as
// payload.
func TestClientStream_StatusDeadline(t *testing.T) {
	VerifyNoLeaks(t)
	for _, cutAfter := range []int{0, 1} {
		t.Run("status_bytes_before_the_deadline_"+string(rune('0'+cutAfter)), func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			cs, err := newClientStream(pipeStream{a}, OpenRequest{Kind: KindProxy, Target: "t", Node: "n:1"})
			if err != nil {
				t.Fatal(err)
			}
			cut := make(chan struct{})
			served := make(chan struct{})
			go func() { // the server
				defer close(served)
				if _, err := ReadHeader(b); err != nil {
					return
				}
				if _, err := b.Write(okStatus[:cutAfter]); err != nil {
					return
				}
				<-cut
				_, _ = b.Write(append(okStatus[cutAfter:len(okStatus):len(okStatus)], "payload"...))
			}()
			_ = cs.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			buf := make([]byte, 7)
			if _, err := cs.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("first Read: %v, want os.ErrDeadlineExceeded", err)
			}
			close(cut)
			_ = cs.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := cs.Read(buf)
			if cutAfter == 0 {
				if err != nil || string(buf[:n]) != "payload" {
					t.Fatalf("Read after a deadline before the status: %q, %v; want payload", buf[:n], err)
				}
				<-served
				return
			}
			if err == nil {
				t.Fatalf("Read after a deadline cut the status returned %q, want the error again", buf[:n])
			}
		})
	}
}
