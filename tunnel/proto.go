package tunnel

// The cachetun wire protocol, version 1. See PROTOCOL.md for the flow.
//
// Every stream of a QUIC or TLS+yamux session starts with an open header
// written by the client:
//
//	magic    [2]byte  "CT"
//	version  uint8    ProtoVersion
//	kind     uint8    KindControl or KindProxy
//	tlen     uint8    length of target
//	nlen     uint8    length of node
//	target   [tlen]byte
//	node     [nlen]byte  upstream node address "host:port" (empty for control)
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

// ProtoVersion is the version byte of the open header.
const ProtoVersion = 1

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
}

// Errors of the codec.
var (
	ErrBadMagic   = errors.New("not a cachetun stream (bad magic)")
	ErrBadVersion = errors.New("unsupported protocol version")
	ErrBadKind    = errors.New("unknown stream kind")
	ErrTooLong    = errors.New("field too long")
)

// AppendHeader appends the encoded open header of r to b.
func AppendHeader(b []byte, r OpenRequest) ([]byte, error) {
	if len(r.Target) > 255 || len(r.Node) > 255 {
		return b, fmt.Errorf("encode open header: %w", ErrTooLong)
	}
	b = append(b, headerMagic[0], headerMagic[1], ProtoVersion, r.Kind, byte(len(r.Target)), byte(len(r.Node)))
	b = append(b, r.Target...)
	return append(b, r.Node...), nil
}

// ReadHeader reads exactly one open header from r and nothing more, so
// early payload behind it stays unread.
func ReadHeader(r io.Reader) (OpenRequest, error) {
	var fixed [6]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return OpenRequest{}, fmt.Errorf("read open header: %w", err)
	}
	if fixed[0] != headerMagic[0] || fixed[1] != headerMagic[1] {
		return OpenRequest{}, fmt.Errorf("read open header: %w", ErrBadMagic)
	}
	if fixed[2] != ProtoVersion {
		return OpenRequest{}, fmt.Errorf("read open header: %w: got %d, want %d", ErrBadVersion, fixed[2], ProtoVersion)
	}
	kind := fixed[3]
	if kind != KindControl && kind != KindProxy {
		return OpenRequest{}, fmt.Errorf("read open header: %w %d", ErrBadKind, kind)
	}
	rest := make([]byte, int(fixed[4])+int(fixed[5]))
	if _, err := io.ReadFull(r, rest); err != nil {
		return OpenRequest{}, fmt.Errorf("read open header: %w", err)
	}
	return OpenRequest{Kind: kind, Target: string(rest[:fixed[4]]), Node: string(rest[fixed[4]:])}, nil
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
