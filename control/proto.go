package control

// Protocol flow of the control stream (see ../tunnel/PROTOCOL.md).
//
// A session has exactly one control stream: on QUIC and TLS+yamux the
// client's first stream, opened with an open header of kind
// tunnel.KindControl; on SSH a channel of type tunnel.ChannelControl. It
// carries frames in both directions:
//
//	type     uint8    FrameType
//	length   uint32   big-endian, at most MaxFrameSize from the client and
//	                  MaxServerFrameSize from the server
//	payload  [length]byte  JSON
//
// The flow of one session:
//
//	client                                  gateway
//	  FrameHello    (key, signature, targets) ->
//	                                        <- FrameWelcome (ok and the topologies,
//	                                           or a Code: a refused key lets the
//	                                           client send its next Hello, up to 6)
//	  ... proxy streams, each its own stream with an open header ...
//	                                        <- FrameTopology (a target's nodes changed;
//	                                           or removed: the session lost it)
//	  FrameRefresh  (a redirect to an unknown node) ->
//	  FramePing                             -> <- FramePong (either side asks)
//	                                        <- FrameGoAway  (draining: reconnect)
//	                                        <- FrameRevoked (access revoked: final)
//	  FrameAck, FrameFin, FrameReset        <-> (resumable streams, link.go)
//
// The gateway serves no proxy stream and dials nothing before a Hello
// verified (on SSH the transport's key check stands in for the signature).

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/cachetun/cachetun/tunnel"
)

// ProtocolVersion is the version of the protocol, carried in the version
// byte of every open header (tunnel.ProtoVersion).
//
// History:
//
//	1: the first version. Compatible extensions since, fields and frames
//	   that an older peer ignores: Hello.Targets, Hello.All and
//	   Welcome.Targets (several targets per session); Hello.List and
//	   Welcome.Allowed (target listings); FrameRefresh with a Refresh
//	   payload naming the target; FrameRevoked; client frames bounded to
//	   MaxFrameSize = 64 KiB (1 MiB before); TargetInfo.Removed and
//	   Reason (a target of a session of several taken away by a reload).
//	2: resumable streams. Hello.Resume and Welcome.ResumeGraceMS
//	   negotiate them; only then does the client send version 2 open
//	   headers (resumable proxy streams and KindResume), and both ends
//	   FrameAck, FrameFin and FrameReset. Every other stream keeps the
//	   version 1 header, so either peer may be older.
const ProtocolVersion = tunnel.ProtoVersion

// FrameType is the first byte of a control frame.
type FrameType byte

// Control frame types. The numbers are the wire format: never renumber.
const (
	// FrameHello: client -> server, the first frame, a Hello: identity
	// proof and target(s). Repeated (up to 6 times) after a Welcome that
	// refused the key.
	FrameHello FrameType = 1
	// FrameWelcome: server -> client, a Welcome answering Hello: accepted
	// with the targets' topologies, or refused with a Code.
	FrameWelcome FrameType = 2
	// FrameTopology: server -> client, a TargetInfo: the nodes of the
	// target it names changed, or, with Removed, the session may no
	// longer use that target (its other targets go on).
	FrameTopology FrameType = 3
	// FramePing: either side, no payload; the peer answers with FramePong.
	FramePing FrameType = 4
	// FramePong: answer to FramePing, no payload.
	FramePong FrameType = 5
	// FrameGoAway: server -> client, no payload: the server drains, so
	// open no new streams and reconnect.
	FrameGoAway FrameType = 6
	// FrameRefresh: client -> server, an optional Refresh: the client saw a
	// redirect; rediscover the target.
	FrameRefresh FrameType = 7
	// FrameRevoked: server -> client, a Revoked: the gateway judged the
	// session again (authorized_keys reloaded, expiry-time or certificate
	// validity passed, from= no longer matching the address) and ends it.
	// The verdict is final: the client stops instead of reconnecting. The
	// server closes the session right after; a client that does not know
	// the frame just sees the session end.
	FrameRevoked FrameType = 8
	// FrameAck: either side, binary (link.go): the receive counters of
	// resumable streams, batched.
	FrameAck FrameType = 9
	// FrameFin: either side, binary: a resumable stream's write side
	// ended after that many bytes.
	FrameFin FrameType = 10
	// FrameReset: either side, binary: a resumable stream was aborted.
	FrameReset FrameType = 11
)

// MaxFrameSize bounds one control frame that a client sends (Hello,
// Ping, Refresh). A Hello with an OpenSSH certificate is a few KiB. The
// gateway checks the declared length against it before allocating
// anything, so a peer that has not authenticated makes it hold at most
// this much per frame.
const MaxFrameSize = 64 << 10

// MaxServerFrameSize bounds one control frame that the gateway sends
// (Welcome and Topology of a large cluster). Readers of such frames
// allocate as the bytes arrive, never the declared length up front.
const MaxServerFrameSize = 1 << 20

// ErrFrameSize is returned for a control frame over its limit.
var ErrFrameSize = errors.New("control frame too large")

// WriteJSON writes a control frame with v encoded as JSON.
func WriteJSON(w io.Writer, typ FrameType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, typ, b)
}

// WriteFrame writes one control frame of at most MaxServerFrameSize bytes
// (the client's frames are small; ReadFrame holds them to MaxFrameSize).
func WriteFrame(w io.Writer, typ FrameType, payload []byte) error {
	if len(payload) > MaxServerFrameSize {
		return fmt.Errorf("write control frame: %w", ErrFrameSize)
	}
	b := make([]byte, 5, 5+len(payload))
	b[0] = byte(typ)
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	_, err := w.Write(append(b, payload...))
	return err
}

// ReadFrame reads one control frame of at most MaxFrameSize bytes: what the
// gateway reads from clients.
func ReadFrame(r io.Reader) (typ FrameType, payload []byte, err error) {
	return ReadFrameLimit(r, MaxFrameSize)
}

// ReadServerFrame reads one control frame of at most MaxServerFrameSize
// bytes: what a client reads from the gateway.
func ReadServerFrame(r io.Reader) (typ FrameType, payload []byte, err error) {
	return ReadFrameLimit(r, MaxServerFrameSize)
}

// frameChunk is what ReadFrameLimit allocates at most ahead of the bytes
// that actually arrived.
const frameChunk = 64 << 10

// ReadFrameLimit reads one control frame whose payload is at most limit
// bytes. The declared length is checked before anything is allocated, and
// a payload longer than 64 KiB is allocated as it arrives, so a peer that
// declares a length and sends nothing costs at most 64 KiB.
func ReadFrameLimit(r io.Reader, limit int) (typ FrameType, payload []byte, err error) {
	var fixed [5]byte
	return readFrame(r, limit, &fixed, nil)
}

// readFrame is ReadFrameLimit with the header read into fixed and, when
// reuse is set, a payload of at most frameReuse bytes read into *reuse
// (grown to fit) instead of a new slice.
func readFrame(r io.Reader, limit int, fixed *[5]byte, reuse *[]byte) (typ FrameType, payload []byte, err error) {
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fixed[1:])
	if uint64(n) > uint64(limit) {
		return 0, nil, fmt.Errorf("read control frame: %w (%d bytes, at most %d)", ErrFrameSize, n, limit)
	}
	switch {
	case reuse != nil && int(n) <= cap(*reuse):
		payload = (*reuse)[:n]
	case reuse != nil && n <= frameReuse:
		*reuse = make([]byte, max(int(n), 256))
		payload = (*reuse)[:n]
	default:
		payload = make([]byte, min(int(n), frameChunk))
	}
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("read control frame: %w", err)
	}
	for len(payload) < int(n) {
		k := len(payload)
		payload = append(payload, make([]byte, min(int(n)-k, frameChunk))...)
		if _, err := io.ReadFull(r, payload[k:]); err != nil {
			return 0, nil, fmt.Errorf("read control frame: %w", err)
		}
	}
	return FrameType(fixed[0]), payload, nil
}

// frameReuse is the largest payload a FrameReader reads into its own
// buffer: a FrameAck of up to 255 entries, and every Fin, Reset, ping and
// refresh.
const frameReuse = 4 << 10

// FrameReader reads the frames of one control stream, as ReadFrameLimit
// does, into buffers of its own: a payload of at most 4 KiB is valid only
// until the next Read. The control loops read a frame or two for every
// resumable stream that ends (its Fin each way); a new header and payload
// for each were two allocations per frame.
type FrameReader struct {
	r     io.Reader
	limit int
	fixed [5]byte
	buf   []byte
}

// NewFrameReader returns a FrameReader of frames of at most limit bytes
// from r.
func NewFrameReader(r io.Reader, limit int) *FrameReader {
	return &FrameReader{r: r, limit: limit}
}

// Read reads the next frame. Its payload is the reader's until the next
// Read when it is at most 4 KiB: keep a copy to hold it longer.
func (f *FrameReader) Read() (FrameType, []byte, error) {
	return readFrame(f.r, f.limit, &f.fixed, &f.buf)
}
