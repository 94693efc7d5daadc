package tunnel

// The cachetun wire protocol, version 2. See PROTOCOL.md for the flow.
//
// Every stream of a QUIC or TLS+yamux session starts with an open header
// written by the client. Version 1:
//
//	magic    [2]byte  "CT"
//	version  uint8    1
//	kind     uint8    KindControl or KindProxy
//	tlen     uint8    length of target
//	nlen     uint8    length of node
//	target   [tlen]byte
//	node     [nlen]byte  upstream node address "host:port" (empty for control)
//
// Version 2 (only to a gateway whose Welcome offered resumption) adds a
// flags byte after the kind and, for a resumable stream, its id and token;
// kind KindResume re-attaches a held stream and carries the client's
// receive counter:
//
//	magic    [2]byte  "CT"
//	version  uint8    2
//	kind     uint8    KindControl, KindProxy or KindResume
//	flags    uint8    FlagResumable, the only value: version 2 is for
//	                  resumable streams (and resumes) only
//	tlen     uint8
//	nlen     uint8
//	target   [tlen]byte
//	node     [nlen]byte
//	id       uint64   big-endian, when FlagResumable
//	token    [16]byte when FlagResumable
//	recv     uint64   big-endian, KindResume only
//
// The gateway answers a KindResume open with a status; after an OK its
// first 8 bytes on the stream are its own receive counter (big-endian),
// then the replay of what the client had not acknowledged.
//
// The client may write payload right behind the header without waiting,
// and must not wait: the server answers every header with a status before
// any payload, but an OK status may wait for the first payload byte (see
// framed.go):
//
//	status   uint8    StatusOK ...
//	mlen     uint16   big-endian length of message (0 for StatusOK)
//	message  [mlen]byte  human readable reason
//
// On SSH the header travels in the channel-open payload of a channel of type
// ChannelStream or ChannelControl, and the status is the SSH open
// confirmation or rejection, so the framing above is not used there.
//
// The control stream (kind KindControl) then carries the frames of
// package control, which knows the messages; to this package it is one
// byte stream like any other.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ProtoVersion is the highest version of the open header this build
// speaks; ProtoVersion1 is the version of a header without resumption,
// which every gateway reads (AppendHeader writes it unless the request is
// resumable).
const (
	ProtoVersion  = 2
	ProtoVersion1 = 1
)

// FlagResumable marks a version 2 open header whose stream may be resumed
// on another session (see Resumable).
const FlagResumable byte = 1

// BindingLabel is the TLS exporter label used for channel binding.
const BindingLabel = "EXPORTER-cachetun-binding"

// SSH channel types used by cachetun's own client. Stock OpenSSH clients use
// "direct-tcpip" instead of ChannelStream.
const (
	ChannelControl = "cachetun-control@cachetun"
	ChannelStream  = "cachetun-stream@cachetun"
)

// Stream kinds.
const (
	// KindControl is the session's control stream: auth, topology, pings.
	KindControl byte = 1
	// KindProxy is one proxied connection to one node of a target.
	KindProxy byte = 2
	// KindResume re-attaches a resumable stream held by the gateway to
	// this session (version 2 only).
	KindResume byte = 3
)

var headerMagic = [2]byte{'C', 'T'}

// Status is the server's answer to an open header.
type Status uint8

// Stream-open statuses.
const (
	StatusOK            Status = 0
	StatusDenied        Status = 1 // the key may not use this target or node
	StatusUnreachable   Status = 2 // the upstream node did not answer
	StatusUnknownTarget Status = 3 // no such target on this server
	StatusUnknownNode   Status = 4 // the node is not part of the target
	StatusBadRequest    Status = 5 // malformed header or unexpected kind
	StatusLimit         Status = 6 // too many streams; try again later
	StatusShutdown      Status = 7 // the server is draining
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusDenied:
		return "denied"
	case StatusUnreachable:
		return "unreachable"
	case StatusUnknownTarget:
		return "unknown target"
	case StatusUnknownNode:
		return "unknown node"
	case StatusBadRequest:
		return "bad request"
	case StatusLimit:
		return "limit reached"
	case StatusShutdown:
		return "server shutting down"
	}
	return fmt.Sprintf("status %d", uint8(s))
}

// StatusError is returned by the first Read of a client stream that the
// server refused.
type StatusError struct {
	Code    Status
	Message string
}

// AsStatusError returns the refusal err is or wraps, if any. It is
// errors.As with a fast path: as errors.As's target escapes, a check of
// it allocates, and these checks run at the end of every stream, whose
// error is mostly nil or io.EOF.
func AsStatusError(err error) (*StatusError, bool) {
	if err == nil || err == io.EOF {
		return nil, false
	}
	var se *StatusError
	ok := errors.As(err, &se)
	return se, ok
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return "stream refused: " + e.Code.String()
	}
	return "stream refused: " + e.Code.String() + ": " + e.Message
}

// OpenRequest is the content of an open header.
type OpenRequest struct {
	Kind   byte
	Target string
	Node   string
	// Resumable (version 2) asks for a stream that may be resumed on
	// another session; ID names it among the client's streams and Token
	// proves it at the resume open. Required with KindResume.
	Resumable bool
	ID        uint64
	Token     ResumeToken
	// Recv, in a KindResume open, is the bytes of the stream the client
	// has delivered to its application.
	Recv uint64
}

// ResumeToken is the secret of a resumable stream, chosen at random by the
// client; only a resume open on a session of the same key that carries it
// re-attaches the stream.
type ResumeToken [16]byte

// Errors of the codec.
var (
	ErrBadMagic   = errors.New("not a cachetun stream (bad magic)")
	ErrBadVersion = errors.New("unsupported protocol version")
	ErrBadKind    = errors.New("unknown stream kind")
	ErrTooLong    = errors.New("field too long")
	ErrBadFlags   = errors.New("unknown or inconsistent open header flags")
)

// AppendHeader appends the encoded open header of r to b: version 1
// unless r is resumable (or a resume), version 2 then.
func AppendHeader(b []byte, r OpenRequest) ([]byte, error) {
	if len(r.Target) > 255 || len(r.Node) > 255 {
		return b, fmt.Errorf("encode open header: %w", ErrTooLong)
	}
	if (r.Kind == KindResume && !r.Resumable) || (r.Kind == KindControl && r.Resumable) {
		return b, fmt.Errorf("encode open header: %w: only proxy streams and resumes are resumable", ErrBadFlags)
	}
	if !r.Resumable {
		b = append(b, headerMagic[0], headerMagic[1], ProtoVersion1, r.Kind, byte(len(r.Target)), byte(len(r.Node)))
		b = append(b, r.Target...)
		return append(b, r.Node...), nil
	}
	b = append(b, headerMagic[0], headerMagic[1], ProtoVersion, r.Kind, FlagResumable, byte(len(r.Target)), byte(len(r.Node)))
	b = append(b, r.Target...)
	b = append(b, r.Node...)
	b = binary.BigEndian.AppendUint64(b, r.ID)
	b = append(b, r.Token[:]...)
	if r.Kind == KindResume {
		b = binary.BigEndian.AppendUint64(b, r.Recv)
	}
	return b, nil
}

// ReadHeader reads exactly one open header (version 1 or 2) from r and
// nothing more, so early payload behind it stays unread.
func ReadHeader(r io.Reader) (OpenRequest, error) {
	var fixed [7]byte
	if _, err := io.ReadFull(r, fixed[:3]); err != nil {
		return OpenRequest{}, fmt.Errorf("read open header: %w", err)
	}
	if fixed[0] != headerMagic[0] || fixed[1] != headerMagic[1] {
		return OpenRequest{}, fmt.Errorf("read open header: %w", ErrBadMagic)
	}
	var req OpenRequest
	var tlen, nlen int
	switch fixed[2] {
	case ProtoVersion1:
		if _, err := io.ReadFull(r, fixed[3:6]); err != nil {
			return OpenRequest{}, fmt.Errorf("read open header: %w", err)
		}
		req.Kind, tlen, nlen = fixed[3], int(fixed[4]), int(fixed[5])
		if req.Kind != KindControl && req.Kind != KindProxy {
			return OpenRequest{}, fmt.Errorf("read open header: %w %d", ErrBadKind, req.Kind)
		}
	case ProtoVersion:
		if _, err := io.ReadFull(r, fixed[3:7]); err != nil {
			return OpenRequest{}, fmt.Errorf("read open header: %w", err)
		}
		req.Kind, tlen, nlen = fixed[3], int(fixed[5]), int(fixed[6])
		flags := fixed[4]
		switch {
		case req.Kind != KindControl && req.Kind != KindProxy && req.Kind != KindResume:
			return OpenRequest{}, fmt.Errorf("read open header: %w %d", ErrBadKind, req.Kind)
		case flags != FlagResumable:
			// Version 2 is the header of resumable streams only: every
			// other stream keeps version 1.
			return OpenRequest{}, fmt.Errorf("read open header: %w: 0x%02x, want 0x%02x", ErrBadFlags, flags, FlagResumable)
		case req.Kind == KindControl:
			return OpenRequest{}, fmt.Errorf("read open header: %w: a control stream is not resumable", ErrBadFlags)
		}
		req.Resumable = true
	default:
		return OpenRequest{}, fmt.Errorf("read open header: %w: got %d, want %d or %d", ErrBadVersion, fixed[2], ProtoVersion1, ProtoVersion)
	}
	tail := 0 // a resumable stream's id, token and (resume) recv follow the names
	if req.Resumable {
		tail = 8 + 16
		if req.Kind == KindResume {
			tail += 8
		}
	}
	rest := make([]byte, tlen+nlen+tail) // one read, one allocation
	if _, err := io.ReadFull(r, rest); err != nil {
		return OpenRequest{}, fmt.Errorf("read open header: %w", err)
	}
	req.Target, req.Node = string(rest[:tlen]), string(rest[tlen:tlen+nlen])
	if req.Resumable {
		t := rest[tlen+nlen:]
		req.ID = binary.BigEndian.Uint64(t[:8])
		copy(req.Token[:], t[8:24])
		if req.Kind == KindResume {
			req.Recv = binary.BigEndian.Uint64(t[24:32])
		}
	}
	return req, nil
}

// AppendStatus appends an encoded status reply to b.
func AppendStatus(b []byte, s Status, msg string) []byte {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	b = append(b, byte(s))
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// ReadStatus reads one status reply. A refusal is returned as *StatusError.
func ReadStatus(r io.Reader) error {
	var fixed [3]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return fmt.Errorf("read stream status: %w", err)
	}
	n := int(binary.BigEndian.Uint16(fixed[1:]))
	if n > 1024 {
		return fmt.Errorf("read stream status: %w", ErrTooLong)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return fmt.Errorf("read stream status: %w", err)
	}
	if s := Status(fixed[0]); s != StatusOK {
		return &StatusError{Code: s, Message: string(msg)}
	}
	return nil
}
