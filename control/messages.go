package control

// Control messages, the JSON payloads of control frames. The JSON field
// names are the wire format.

// Hello is the payload of FrameHello, the client's first control frame.
type Hello struct {
	Client string `json:"client"` // software version
	// Target is the first (or only) target; Targets, when set, lists every
	// target of the session and starts with Target, so that a gateway that
	// knows only Target still serves the first one.
	Target  string   `json:"target"`
	Targets []string `json:"targets,omitempty"`
	// All asks for every target the key may use (Target and Targets are
	// then ignored).
	All bool `json:"all,omitempty"`
	// List asks only for the targets the key may use: the Welcome carries
	// Allowed and the gateway then closes the session.
	List bool `json:"list,omitempty"`
	// PublicKey is the wire form of the client's SSH public key or
	// certificate; Signature signs the session binding (empty on SSH,
	// where the transport authenticated the key).
	PublicKey []byte `json:"public_key,omitempty"`
	SigFormat string `json:"sig_format,omitempty"`
	SigBlob   []byte `json:"sig_blob,omitempty"`
	SigRest   []byte `json:"sig_rest,omitempty"`
	// Resume says that the client can resume streams on a new session
	// (protocol version 2): a gateway that can answers ResumeGraceMS.
	Resume bool `json:"resume,omitempty"`
}

// MaxHelloTargets bounds the targets one Hello may name.
const MaxHelloTargets = 64

// RateLimitedPrefix starts the gateway's refusal of a source over its
// failed-authentication budget ("too many failed authentications from
// 198.51.100.27: retry in 41 s"). On QUIC and TLS it comes with
// CodeRateLimited; on SSH a banner is the only channel, so the client
// tells it from a refused key by this prefix.
const RateLimitedPrefix = "too many failed authentications from "

// Welcome is the payload of FrameWelcome, the answer to Hello.
type Welcome struct {
	OK      bool   `json:"ok"`
	Code    Code   `json:"code,omitempty"` // why not OK
	Error   string `json:"error,omitempty"`
	Hint    string `json:"hint,omitempty"`
	Server  string `json:"server,omitempty"`
	Session string `json:"session,omitempty"` // id for correlating logs
	Target  *TargetInfo
	// Targets are the topologies of every target of the session, the
	// first one also in Target (absent from gateways before multi-target
	// sessions).
	Targets []TargetInfo `json:"targets,omitempty"`
	// Allowed answers a Hello with List.
	Allowed []TargetSummary `json:"allowed,omitempty"`
	// ResumeGraceMS, answering a Hello with Resume, says that the gateway
	// holds a resumable stream that long after its session died; 0 (an
	// older gateway, or resumption off): plain streams only.
	ResumeGraceMS int64 `json:"resume_grace_ms,omitempty"`
	// OpenPayload, on SSH, says that the gateway takes a stream's first
	// payload behind the open header in its channel-open (at most
	// tunnel.MaxOpenPayload bytes), so that a new connection costs one
	// round trip as on QUIC and TLS; absent (an older gateway): the
	// channel-open carries the header alone.
	OpenPayload bool `json:"open_payload,omitempty"`
}

// Revoked is the payload of FrameRevoked: why the gateway ended the
// session. Code is one of CodeUnknownKey, CodeKeyExpired,
// CodeSourceDenied, CodeCertInvalid, CodeKeyRestricted, CodeDenied,
// CodeTargetDenied, CodeTargetRemoved; Error is a sentence for the user,
// Hint the way out.
type Revoked struct {
	Code  Code   `json:"code"`
	Error string `json:"error"`
	Hint  string `json:"hint,omitempty"`
}

// TargetSummary is one line of a target listing (Welcome.Allowed).
type TargetSummary struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Nodes int    `json:"nodes"`
}

// Refresh is the optional payload of FrameRefresh; an empty payload means
// the session's first target.
type Refresh struct {
	Target string `json:"target,omitempty"`
}

// TargetInfo describes a target and its nodes: in Welcome, and as the
// payload of FrameTopology whenever the topology changes.
type TargetInfo struct {
	Name  string     `json:"name"`
	Type  string     `json:"type"`
	Nodes []NodeInfo `json:"nodes"`
	// Version counts the gateway's topology changes of this target.
	Version int64 `json:"version,omitempty"`
	// Removed, in a FrameTopology, says that the session may no longer
	// use the target while its other targets go on: a reload removed it
	// from the gateway, or narrowed the key's targets= or permitopen=.
	// Nodes is then empty and Reason says why, a sentence for the user.
	// The client closes the target's local ports; the gateway sends
	// nothing more about it in this session. The session's last target
	// is never removed this way: FrameRevoked ends the session instead.
	Removed bool   `json:"removed,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// NodeInfo is one upstream node. Addr is what stream requests name.
type NodeInfo struct {
	Addr  string `json:"addr"`
	ID    string `json:"id,omitempty"`
	Role  string `json:"role,omitempty"`
	Slots string `json:"slots,omitempty"`
}

// Code says why the gateway refused a Hello (Welcome.Code) or ended a
// session (Revoked.Code). The strings are the wire format.
type Code string

// Codes of a refused key: the client may offer its next key (KeyRefusal).
const (
	CodeUnknownKey    Code = "unknown_key"    // the key is not in authorized_keys
	CodeKeyExpired    Code = "key_expired"    // expiry-time or the certificate's validity passed
	CodeSourceDenied  Code = "source_denied"  // from= does not match the client's address
	CodeCertInvalid   Code = "cert_invalid"   // the certificate is not valid for this gateway
	CodeKeyRestricted Code = "key_restricted" // restrict or no-port-forwarding on the key's line
	CodeDenied        Code = "denied"         // any other refusal of the key
)

// Codes of a refused session: no other key changes them.
const (
	CodeProtocol      Code = "protocol"       // not a Hello, or a Hello that does not decode
	CodeBadKey        Code = "bad_key"        // the Hello's public key does not parse
	CodeBadSignature  Code = "bad_signature"  // the signature does not prove the key for this session
	CodeTooManyTries  Code = "too_many_tries" // more keys offered than the gateway allows
	CodeSessionLimit  Code = "session_limit"  // the key holds as many sessions as it may
	CodeRateLimited   Code = "rate_limited"   // too many failed authentications from the address
	CodeUnknownTarget Code = "unknown_target" // no such target on the gateway
	CodeTargetDenied  Code = "target_denied"  // the key may not use the target
	CodeTargetRemoved Code = "target_removed" // Revoked only: a reload removed or changed the target
)

// KeyRefusal reports whether c refuses the key rather than the session:
// the gateway lets the client try its next key. Any other refusal
// (unknown_target, target_denied, too_many_tries, ...) ends the attempt.
func (c Code) KeyRefusal() bool {
	switch c {
	case CodeUnknownKey, CodeKeyExpired, CodeSourceDenied, CodeCertInvalid, CodeKeyRestricted, CodeDenied:
		return true
	}
	return false
}
