package tunnel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// The SSH transport. A session is one SSH connection; every stream is one
// channel:
//
//   - ChannelControl and ChannelStream, opened by cachetun clients, carry the
//     open header (AppendHeader) as their channel-open payload. The status is
//     the open confirmation or failure; a failure's reason code is
//     sshReasonBase+Status, in the range RFC 4254 §5.1 leaves for private
//     use, so the client gets the exact Status back.
//   - "direct-tcpip", opened by stock OpenSSH clients (ssh -N -L), carries
//     RFC 4254 §7.2 host and port. It becomes a KindProxy request with an
//     empty Target and Node "host:port"; refusals use the standard reason
//     codes, which OpenSSH prints ("administratively prohibited: ...").
//
// Client authentication is the SSH handshake's own (publickey), done by the
// callbacks of the ssh.ServerConfig that ListenSSH is given; server sessions
// implement PreAuthenticated. The session binding is the SSH session ID.

// SSHAuthInfoKey is the key of ssh.Permissions.ExtraData under which the
// server's authentication callback stores the value that AuthInfo returns
// for the session (the gateway puts its *auth.Identity there). x/crypto
// guarantees that the session's Permissions are those returned for the key
// that actually authenticated, never for a key that was only offered.
const SSHAuthInfoKey = "cachetun-auth-info"

// sshReasonBase is the first SSH channel-open failure reason that carries a
// Status: reason = sshReasonBase + Status (RFC 4254 §5.1: 0xFE000000 and up
// are for private use). Only cachetun's own channel types use it.
const sshReasonBase = 0xFE000000

// sshDirectTCPIP is the channel-open payload of "direct-tcpip" (RFC 4254
// §7.2). x/crypto's own struct has unexported fields, so ssh.Unmarshal
// cannot fill it.
type sshDirectTCPIP struct {
	DestAddr   string
	DestPort   uint32
	OriginAddr string
	OriginPort uint32
}

// SSHConfig holds the tuning of the SSH transport.
type SSHConfig struct {
	// HandshakeTimeout bounds the SSH handshake, key exchange and client
	// authentication together. x/crypto has no such bound of its own.
	HandshakeTimeout time.Duration
	// KeepAlive is the period of keepalive@openssh.com requests; 0 turns
	// them off. x/crypto has no keepalive: without it a peer that vanished
	// leaves reads blocked until TCP keepalive gives up.
	KeepAlive time.Duration
	// KeepAliveTimeout is how long a keepalive may stay unanswered before
	// the whole connection is closed; 0 means KeepAlive.
	KeepAliveTimeout time.Duration
	// MaxStreams bounds the channels waiting to be accepted; more are
	// refused with ResourceShortage.
	MaxStreams int
	// Admission, on a server, decides which connections may start a
	// handshake; nil allows 256 handshakes at once.
	Admission Admission
	// LocalAddr, on a client, is the local IP address to dial from (as
	// ssh -b); empty lets the system choose.
	LocalAddr string
}

// DefaultSSHConfig returns the defaults.
func DefaultSSHConfig() SSHConfig {
	return SSHConfig{HandshakeTimeout: 10 * time.Second, KeepAlive: 15 * time.Second, MaxStreams: 1024}
}

func (c SSHConfig) keepAliveTimeout() time.Duration {
	if c.KeepAliveTimeout > 0 {
		return c.KeepAliveTimeout
	}
	return c.KeepAlive
}

// SSHAlgorithms sets the key exchanges, ciphers and MACs cachetun uses
// where c leaves them empty: post-quantum hybrid and curve25519 key
// exchange, AES-GCM first (faster than chacha20-poly1305 on CPUs with
// AES-NI: BENCHMARKS.md, "Figures behind design choices"). OpenSSH 8.x and
// newer speak all of them.
func SSHAlgorithms(c *ssh.Config) {
	if len(c.KeyExchanges) == 0 {
		c.KeyExchanges = []string{ssh.KeyExchangeMLKEM768X25519, ssh.KeyExchangeCurve25519}
	}
	if len(c.Ciphers) == 0 {
		c.Ciphers = []string{ssh.CipherAES128GCM, ssh.CipherAES256GCM, ssh.CipherChaCha20Poly1305}
	}
	if len(c.MACs) == 0 {
		// Only used with non-AEAD ciphers, which the list above excludes.
		c.MACs = []string{ssh.HMACSHA256ETM, ssh.HMACSHA512ETM}
	}
}

// ListenSSH listens on the TCP address addr for SSH sessions. cfg must have
// a host key and the client authentication callbacks; the callback that
// accepts a key stores what AuthInfo returns in
// Permissions.ExtraData[SSHAuthInfoKey]. Handshakes run concurrently, each
// bounded by sc.HandshakeTimeout, so a slow client cannot stall others.
// Closing the listener aborts the handshakes in flight; sessions already
// accepted are left alone.
func ListenSSH(addr string, cfg *ssh.ServerConfig, sc SSHConfig) (Listener, error) {
	conf := *cfg // NewServerConn copies it too; never mutate the caller's
	SSHAlgorithms(&conf.Config)
	tcp, err := net.Listen(exactNetwork("tcp", addr), addr)
	if err != nil {
		return nil, fmt.Errorf("listen ssh on %q: %w", addr, err)
	}
	return newTCPListener(tcp, sshHandshake(&conf, sc), sc.Admission), nil
}

// sshHandshake returns the handshake of the SSH transport.
func sshHandshake(conf *ssh.ServerConfig, sc SSHConfig) handshakeFunc {
	return func(lctx context.Context, c net.Conn) (Session, error) {
		if sc.HandshakeTimeout > 0 {
			_ = c.SetDeadline(time.Now().Add(sc.HandshakeTimeout))
		}
		stop := context.AfterFunc(lctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
		conn, chans, reqs, err := ssh.NewServerConn(newFastConn(c), conf)
		if !stop() {
			if err == nil {
				conn.Close()
			}
			return nil, net.ErrClosed
		}
		if err != nil {
			return nil, err
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			conn.Close()
			return nil, err
		}
		var info any
		if conn.Permissions != nil {
			info = conn.Permissions.ExtraData[SSHAuthInfoKey]
		}
		return newSSHSession(conn, chans, reqs, sc, true, info), nil
	}
}

// DialSSH opens an SSH session to addr. ctx bounds the TCP dial and the
// handshake, which sc.HandshakeTimeout bounds as well; cfg must set User,
// Auth and HostKeyCallback. Channels the server opens are refused.
func DialSSH(ctx context.Context, addr string, cfg *ssh.ClientConfig, sc SSHConfig) (Session, error) {
	conf := *cfg
	SSHAlgorithms(&conf.Config)
	d, err := tcpDialer(sc.LocalAddr)
	if err != nil {
		return nil, err
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	setTCPOptions(c)
	if sc.HandshakeTimeout > 0 {
		_ = c.SetDeadline(time.Now().Add(sc.HandshakeTimeout))
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	conn, chans, reqs, err := ssh.NewClientConn(newFastConn(c), addr, &conf)
	if !stop() {
		if err == nil {
			conn.Close()
		}
		c.Close()
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, context.Cause(ctx))
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, err
	}
	return newSSHSession(conn, chans, reqs, sc, false, nil), nil
}

// sshSession is either end of an SSH connection.
type sshSession struct {
	conn     ssh.Conn
	sc       SSHConfig
	server   bool
	authInfo any
	// openPayload: proxy channels open lazily, with their first payload
	// (sshopen.go); client only, set when the gateway announced it.
	openPayload atomic.Bool
	// incoming holds channels the peer opened that AcceptStream has not
	// returned yet (server only).
	incoming chan Incoming
	done     chan struct{} // closed when the connection has ended
	once     sync.Once
	wg       sync.WaitGroup // the goroutines below
}

func newSSHSession(conn ssh.Conn, chans <-chan ssh.NewChannel, reqs <-chan *ssh.Request, sc SSHConfig, server bool, authInfo any) *sshSession {
	s := &sshSession{conn: conn, sc: sc, server: server, authInfo: authInfo, done: make(chan struct{})}
	if server {
		s.incoming = make(chan Incoming, max(sc.MaxStreams, 1))
	}
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		_ = conn.Wait()
		close(s.done)
	}()
	// Every request and channel channel must be drained, or x/crypto's
	// connection loop stalls. Global requests (keepalive@openssh.com,
	// tcpip-forward, hostkeys-00@openssh.com, ...) are all answered with
	// failure, as OpenSSH answers keepalives: any answer proves liveness.
	go func() {
		defer s.wg.Done()
		ssh.DiscardRequests(reqs)
	}()
	go func() {
		defer s.wg.Done()
		s.serveChannels(chans)
	}()
	if sc.KeepAlive > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.keepAlive()
		}()
	}
	return s
}

// serveChannels sorts the channels the peer opens. It never blocks: a
// channel that finds the queue full is refused at once.
func (s *sshSession) serveChannels(chans <-chan ssh.NewChannel) {
	for nc := range chans {
		if !s.server {
			_ = nc.Reject(ssh.Prohibited, "cachetun clients accept no channels")
			continue
		}
		switch nc.ChannelType() {
		case ChannelStream, ChannelControl, "direct-tcpip":
		default:
			_ = nc.Reject(ssh.UnknownChannelType, fmt.Sprintf(
				"cachetun gateway: channel type %q is not supported: only port forwarding works (ssh -N -L LOCALPORT:TARGET:PORT)", nc.ChannelType()))
			continue
		}
		select {
		case s.incoming <- &sshIncoming{nc: nc}:
		default:
			_ = nc.Reject(ssh.ResourceShortage, "too many streams waiting to be accepted")
		}
	}
}

// keepAlive sends keepalive@openssh.com every sc.KeepAlive and closes the
// connection when one stays unanswered for the timeout. SendRequest has no
// deadline of its own (and a stuck one blocks every later global request),
// so it runs in a goroutine that closing the connection releases.
func (s *sshSession) keepAlive() {
	t := time.NewTicker(s.sc.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := s.conn.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		timeout := time.NewTimer(s.sc.keepAliveTimeout())
		select {
		case err := <-reply:
			timeout.Stop()
			if err != nil {
				s.conn.Close()
				return
			}
		case <-timeout.C:
			s.conn.Close() // the peer is gone; this also ends SendRequest
			<-reply
			return
		case <-s.done:
			timeout.Stop()
			<-reply
			return
		}
	}
}

// OpenStream opens a channel and waits for the server's answer. As on the
// other transports, a refusal is not an error of OpenStream: the first Read
// of the stream returns it as a *StatusError (and writes are dropped).
func (s *sshSession) OpenStream(ctx context.Context, req OpenRequest) (Stream, error) {
	typ := ChannelStream
	if req.Kind == KindControl {
		typ = ChannelControl
	}
	hdr, err := AppendHeader(make([]byte, 0, 7+len(req.Target)+len(req.Node)+32), req)
	if err != nil {
		return nil, err
	}
	if req.Kind == KindProxy && s.openPayload.Load() {
		return newSSHOpening(s, typ, hdr), nil
	}
	return s.openChannel(ctx, typ, hdr)
}

// openChannel opens a channel of type typ with extra as its channel-open
// payload and waits for the peer's answer, for ctx or for the session's
// end. A refusal is not an error: the stream returned reads it as a
// *StatusError (refusedStream). A channel that opens after the wait was
// given up is closed.
func (s *sshSession) openChannel(ctx context.Context, typ string, extra []byte) (Stream, error) {
	type result struct {
		ch   ssh.Channel
		reqs <-chan *ssh.Request
		err  error
	}
	// OpenChannel waits for the peer's answer with no deadline.
	rc := make(chan result, 1)
	go func() {
		ch, reqs, err := s.conn.OpenChannel(typ, extra)
		rc <- result{ch, reqs, err}
	}()
	var r result
	var stopped error
	select {
	case r = <-rc:
	case <-ctx.Done():
		stopped = ctx.Err()
	case <-s.done:
		stopped = fmt.Errorf("open stream: %w", ErrSessionClosed)
	}
	if stopped != nil {
		go func() { // a channel that opens after all is closed
			if r := <-rc; r.err == nil {
				go ssh.DiscardRequests(r.reqs)
				r.ch.Close()
			}
		}()
		return nil, stopped
	}
	if r.err != nil {
		var oe *ssh.OpenChannelError
		if errors.As(r.err, &oe) {
			return &refusedStream{err: sshStatusError(oe)}, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("open stream: %w", ErrSessionClosed)
		default:
		}
		return nil, fmt.Errorf("open stream: %w", r.err)
	}
	go ssh.DiscardRequests(r.reqs) // ends when the channel closes
	return newSSHStream(r.ch), nil
}

// sshStatusError turns a channel-open failure into the Status the server
// meant.
func sshStatusError(oe *ssh.OpenChannelError) *StatusError {
	code := StatusBadRequest
	switch r := uint32(oe.Reason); {
	case r > sshReasonBase && r <= sshReasonBase+0xff:
		code = Status(r - sshReasonBase)
	case oe.Reason == ssh.Prohibited:
		code = StatusDenied
	case oe.Reason == ssh.ConnectionFailed:
		code = StatusUnreachable
	case oe.Reason == ssh.ResourceShortage:
		code = StatusLimit
	}
	return &StatusError{Code: code, Message: oe.Message}
}

func (s *sshSession) AcceptStream(ctx context.Context) (Incoming, error) {
	select {
	case in := <-s.incoming: // nil channel on the client: blocks
		return in, nil
	case <-s.done:
		return nil, ErrSessionClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// AuthInfo returns Permissions.ExtraData[SSHAuthInfoKey] of the key that
// authenticated the client (server sessions; nil on the client).
func (s *sshSession) AuthInfo() any { return s.authInfo }

func (s *sshSession) Binding() []byte       { return s.conn.SessionID() }
func (s *sshSession) Transport() string     { return "ssh" }
func (s *sshSession) LocalAddr() net.Addr   { return s.conn.LocalAddr() }
func (s *sshSession) RemoteAddr() net.Addr  { return s.conn.RemoteAddr() }
func (s *sshSession) Done() <-chan struct{} { return s.done }

// Close closes the connection, and with it every channel, and waits for
// the session's goroutines.
func (s *sshSession) Close() error {
	s.once.Do(func() {
		s.conn.Close()
		s.wg.Wait()
	})
	return nil
}

// sshIncoming is a channel the peer opened, not yet accepted or refused.
type sshIncoming struct {
	nc   ssh.NewChannel
	once sync.Once
	// early is the payload behind the header in the channel-open of a
	// ChannelStream (sshopen.go): the accepted stream's first bytes.
	early []byte
}

// Request decodes the channel-open payload; it never waits, the payload
// came with the open.
func (in *sshIncoming) Request(time.Time) (OpenRequest, error) {
	extra := in.nc.ExtraData()
	if in.nc.ChannelType() == "direct-tcpip" {
		var d sshDirectTCPIP
		if err := ssh.Unmarshal(extra, &d); err != nil {
			return OpenRequest{}, fmt.Errorf("read direct-tcpip request: %w", err)
		}
		if d.DestAddr == "" || len(d.DestAddr) > 255 || d.DestPort > 65535 {
			return OpenRequest{}, fmt.Errorf("read direct-tcpip request: bad destination %q port %d", d.DestAddr, d.DestPort)
		}
		return OpenRequest{Kind: KindProxy, Node: net.JoinHostPort(d.DestAddr, strconv.FormatUint(uint64(d.DestPort), 10))}, nil
	}
	r := bytes.NewReader(extra)
	req, err := ReadHeader(r)
	if err != nil {
		return OpenRequest{}, err
	}
	switch {
	case r.Len() == 0:
	case in.nc.ChannelType() != ChannelStream:
		return OpenRequest{}, fmt.Errorf("read open header: %d bytes of trailing data", r.Len())
	case r.Len() > MaxOpenPayload:
		return OpenRequest{}, fmt.Errorf("read open header: %d bytes of payload in the channel-open, at most %d", r.Len(), MaxOpenPayload)
	default:
		in.early = bytes.Clone(extra[len(extra)-r.Len():])
	}
	want := KindProxy
	if in.nc.ChannelType() == ChannelControl {
		want = KindControl
	}
	if req.Kind != want && (want != KindProxy || req.Kind != KindResume) {
		return OpenRequest{}, fmt.Errorf("read open header: %w %d on a %s channel", ErrBadKind, req.Kind, in.nc.ChannelType())
	}
	return req, nil
}

func (in *sshIncoming) Accept() (Stream, error) {
	ch, reqs, err := in.nc.Accept()
	if err != nil {
		return nil, err
	}
	go ssh.DiscardRequests(reqs) // ends when the channel closes
	st := newSSHStream(ch)
	st.early, in.early = in.early, nil
	return st, nil
}

func (in *sshIncoming) Reject(code Status, msg string) { in.rejectFreed(code, msg, nil) }

// rejectFreed is Reject that calls freed, if not nil, before the refusal
// is sent: the refusal itself frees the channel.
func (in *sshIncoming) rejectFreed(code Status, msg string, freed func()) {
	in.once.Do(func() {
		if freed != nil {
			freed()
		}
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		if in.nc.ChannelType() != "direct-tcpip" {
			_ = in.nc.Reject(ssh.RejectionReason(sshReasonBase+uint32(code)), msg)
			return
		}
		// Stock clients know only the four standard reasons.
		reason := ssh.Prohibited
		switch code {
		case StatusUnreachable:
			reason = ssh.ConnectionFailed
		case StatusLimit, StatusShutdown:
			reason = ssh.ResourceShortage
		}
		_ = in.nc.Reject(reason, "cachetun: "+code.String()+": "+msg)
	})
}

// sshStream adapts ssh.Channel to Stream.
//
// SSH has no stream reset: Abort closes the channel like Close, and the peer
// sees a clean end. SSH channels have no deadlines either: here a deadline
// that passes while a Read (or Write) is blocked closes the channel, which
// is the only way to release it, and that call and every later one return
// os.ErrDeadlineExceeded. A deadline that passes while nothing is blocked
// only makes the next call fail at once, unless it is moved first, as on a
// net.Conn. After Close or Abort, Read and Write return net.ErrClosed.
type sshStream struct {
	ch ssh.Channel
	// early is what came in the channel-open behind the header (server
	// only), returned by the first Reads.
	early []byte

	mu       sync.Mutex // guards the following
	rd, wd   sshDeadline
	err      error // set when a deadline cut the stream, or by Close
	wroteEOF bool
}

// sshDeadline is one direction's deadline.
type sshDeadline struct {
	t      time.Time
	timer  *time.Timer
	gen    uint64 // counts changes, so a stale timer does nothing
	active int    // calls blocked in the channel now
}

func newSSHStream(ch ssh.Channel) *sshStream { return &sshStream{ch: ch} }

func (s *sshStream) Read(p []byte) (int, error) {
	if err := s.begin(&s.rd); err != nil {
		return 0, err
	}
	if len(s.early) > 0 && len(p) > 0 {
		n := copy(p, s.early)
		if s.early = s.early[n:]; len(s.early) == 0 {
			s.early = nil
		}
		return n, s.end(&s.rd, nil)
	}
	n, err := s.ch.Read(p)
	return n, s.end(&s.rd, err)
}

func (s *sshStream) Write(p []byte) (int, error) {
	if err := s.begin(&s.wd); err != nil {
		return 0, err
	}
	n, err := s.ch.Write(p)
	return n, s.end(&s.wd, err)
}

func (s *sshStream) begin(d *sshDeadline) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if !d.t.IsZero() && !time.Now().Before(d.t) {
		return os.ErrDeadlineExceeded
	}
	d.active++
	return nil
}

// end reports the stream's own error instead of the io.EOF that closing
// the channel under a blocked call produces.
func (s *sshStream) end(d *sshDeadline, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.active--
	if err != nil && s.err != nil {
		return s.err
	}
	return err
}

func (s *sshStream) SetReadDeadline(t time.Time) error {
	s.setDeadline(&s.rd, t)
	return nil
}

func (s *sshStream) SetWriteDeadline(t time.Time) error {
	s.setDeadline(&s.wd, t)
	return nil
}

func (s *sshStream) SetDeadline(t time.Time) error {
	s.setDeadline(&s.rd, t)
	s.setDeadline(&s.wd, t)
	return nil
}

func (s *sshStream) setDeadline(d *sshDeadline, t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.t = t
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if t.IsZero() || s.err != nil {
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(time.Until(t), func() { s.expire(d, gen) })
}

// expire runs when deadline generation gen of d passes.
func (s *sshStream) expire(d *sshDeadline, gen uint64) {
	s.mu.Lock()
	if d.gen != gen || d.active == 0 || s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = os.ErrDeadlineExceeded
	s.stopTimersLocked()
	s.mu.Unlock()
	_ = s.ch.Close()
}

func (s *sshStream) stopTimersLocked() {
	for _, d := range []*sshDeadline{&s.rd, &s.wd} {
		if d.timer != nil {
			d.timer.Stop()
			d.timer = nil
		}
	}
}

// CloseWrite sends EOF; the peer reads io.EOF and may go on writing.
func (s *sshStream) CloseWrite() error {
	s.mu.Lock()
	if s.wroteEOF || s.err != nil {
		s.mu.Unlock()
		return nil
	}
	s.wroteEOF = true
	s.mu.Unlock()
	err := s.ch.CloseWrite()
	if errors.Is(err, io.EOF) { // the peer closed the channel already
		return nil
	}
	return err
}

// Close closes the channel in both directions. x/crypto frees it when the
// peer confirms.
func (s *sshStream) Close() error {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil
	}
	s.err = net.ErrClosed
	s.stopTimersLocked()
	s.mu.Unlock()
	err := s.ch.Close()
	if errors.Is(err, io.EOF) { // the peer closed the channel already
		return nil
	}
	return err
}

// Abort is Close: SSH cannot reset a channel.
func (s *sshStream) Abort() { _ = s.Close() }

// refusedStream is a stream the server refused to open: Read returns the
// refusal, writes are dropped as early data to a refused stream is on the
// other transports.
type refusedStream struct{ err *StatusError }

func (r *refusedStream) Read([]byte) (int, error)         { return 0, r.err }
func (r *refusedStream) Write(p []byte) (int, error)      { return len(p), nil }
func (r *refusedStream) CloseWrite() error                { return nil }
func (r *refusedStream) Close() error                     { return nil }
func (r *refusedStream) Abort()                           {}
func (r *refusedStream) SetDeadline(time.Time) error      { return nil }
func (r *refusedStream) SetReadDeadline(time.Time) error  { return nil }
func (r *refusedStream) SetWriteDeadline(time.Time) error { return nil }
