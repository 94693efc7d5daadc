//go:build linux

package tunnel_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cachetun/cachetun/tunnel"
)

// TestLossyUDPConn_KernelErrors sends through the wrapper on a socket in a
// network namespace of its own, where the real kernel hands sendmsg each
// error: the transient ones (ENETUNREACH: no route; EHOSTUNREACH: an
// unreachable route; EPERM: an iptables OUTPUT DROP) are reported as sent
// and counted; the ones quic-go handles itself reach it unchanged
// (EMSGSIZE, which drives its path MTU discovery; EINVAL from a GSO batch
// the kernel refuses), and so does a closed socket's error.
func TestLossyUDPConn_KernelErrors(t *testing.T) {
	ns := newNetns(t)
	run(t, "ip", "-n", ns, "route", "add", "unreachable", "10.215.0.0/16")
	run(t, "ip", "netns", "exec", ns, "iptables", "-I", "OUTPUT", "-p", "udp", "-d", "127.0.0.2", "-j", "DROP")
	var udp *net.UDPConn
	var err error
	inNetns(t, ns, func() { udp, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero}) })
	if err != nil {
		t.Fatal(err)
	}
	var counts errnoCounts
	w := tunnel.NewLossyUDPConn(udp, nil, counts.add, nil)
	defer w.Close()

	for _, tc := range []struct {
		to    string
		errno syscall.Errno
		name  string
	}{
		{"10.214.0.1:9", syscall.ENETUNREACH, "ENETUNREACH"},
		{"10.215.0.1:9", syscall.EHOSTUNREACH, "EHOSTUNREACH"},
		{"127.0.0.2:9", syscall.EPERM, "EPERM"},
	} {
		to, err := net.ResolveUDPAddr("udp4", tc.to)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := udp.WriteMsgUDP([]byte("x"), nil, to); !errors.Is(err, tc.errno) {
			t.Fatalf("the bare socket's send to %s: %v, want %s (the namespace is not as set up)", tc.to, err, tc.name)
		}
		n, oobn, err := w.WriteMsgUDP([]byte("hello"), []byte{}, to)
		if err != nil || n != 5 || oobn != 0 {
			t.Errorf("WriteMsgUDP to %s = %d, %d, %v; want 5, 0, nil (taken as lost)", tc.to, n, oobn, err)
		}
		if n, err := w.WriteTo([]byte("hello"), to); err != nil || n != 5 {
			t.Errorf("WriteTo %s = %d, %v; want 5, nil", tc.to, n, err)
		}
		if got := counts.get(tc.name); got != 2 {
			t.Errorf("%s counted %d times, want 2", tc.name, got)
		}
	}

	lo := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	if _, _, err := w.WriteMsgUDP(make([]byte, 70000), nil, lo); !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("a 70000-byte datagram: %v, want EMSGSIZE passed on to quic-go", err)
	}
	// UDP_SEGMENT of 10 bytes for 300 segments: the kernel allows 64
	// (128 since Linux 6.x).
	gso := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&gso[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(gso[unix.CmsgLen(0):], 10)
	if _, _, err := w.WriteMsgUDP(make([]byte, 3000), gso, lo); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("an oversized GSO batch: %v, want EINVAL passed on to quic-go", err)
	}
	if n, _, err := w.WriteMsgUDP([]byte("ok"), nil, lo); err != nil || n != 2 {
		t.Errorf("a good send: %d, %v", n, err)
	}
	w.Close()
	if _, _, err := w.WriteMsgUDP([]byte("x"), nil, lo); !errors.Is(err, net.ErrClosed) {
		t.Errorf("send on a closed socket: %v, want net.ErrClosed passed on", err)
	}
	if t.Failed() {
		return
	}
	t.Logf("counted: %v", &counts)
}

// TestLossyUDPConn_LogsOncePerInterval: a burst of failed sends is one log
// line per errno per interval, which then says how many packets it stands
// for; the counter sees every packet.
func TestLossyUDPConn_LogsOncePerInterval(t *testing.T) {
	ns := newNetns(t)
	run(t, "ip", "-n", ns, "route", "add", "unreachable", "10.215.0.0/16")
	var udp *net.UDPConn
	var err error
	inNetns(t, ns, func() { udp, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero}) })
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		buf bytes.Buffer
		now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	)
	log := slog.New(slog.NewJSONHandler(lockedWriter{&mu, &buf}, nil))
	var counts errnoCounts
	w := tunnel.NewLossyUDPConn(udp, log, counts.add, func() time.Time { return now })
	defer w.Close()
	noRoute := &net.UDPAddr{IP: net.IPv4(10, 214, 0, 1), Port: 9}
	unreachable := &net.UDPAddr{IP: net.IPv4(10, 215, 0, 1), Port: 9}
	send := func(to *net.UDPAddr, n int) {
		for range n {
			if _, _, err := w.WriteMsgUDP([]byte("x"), nil, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(noRoute, 100)
	send(unreachable, 3)
	now = now.Add(tunnel.SendErrorLogInterval - time.Millisecond)
	send(noRoute, 49)
	now = now.Add(time.Millisecond)
	send(noRoute, 1)

	type line struct {
		Errno   string
		Packets int
	}
	var got []line
	mu.Lock()
	dec := json.NewDecoder(&buf)
	mu.Unlock()
	for dec.More() {
		var l line
		if err := dec.Decode(&l); err != nil {
			t.Fatal(err)
		}
		got = append(got, l)
	}
	want := []line{{"ENETUNREACH", 1}, {"EHOSTUNREACH", 1}, {"ENETUNREACH", 149}}
	if len(got) != len(want) {
		t.Fatalf("log lines %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("log line %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if counts.get("ENETUNREACH") != 150 || counts.get("EHOSTUNREACH") != 3 {
		t.Errorf("counted %v, want ENETUNREACH 150, EHOSTUNREACH 3", &counts)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestTransientSendErrno: exactly the six errnos are taken as loss, as
// quic-go's sendmsg errors come (*net.OpError around *os.SyscallError);
// the errors quic-go handles itself are not: EIO (its GSO fallback,
// isGSOError), EMSGSIZE (path MTU discovery, isSendMsgSizeErr), nor any
// other.
func TestTransientSendErrno(t *testing.T) {
	wrap := func(e syscall.Errno) error {
		return &net.OpError{Op: "write", Net: "udp", Err: os.NewSyscallError("sendmsg", e)}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{wrap(syscall.ENETUNREACH), "ENETUNREACH"},
		{wrap(syscall.EHOSTUNREACH), "EHOSTUNREACH"},
		{wrap(syscall.EADDRNOTAVAIL), "EADDRNOTAVAIL"},
		{wrap(syscall.ENETDOWN), "ENETDOWN"},
		{wrap(syscall.ENOBUFS), "ENOBUFS"},
		{wrap(syscall.EPERM), "EPERM"},
		{wrap(syscall.EIO), ""},
		{wrap(syscall.EMSGSIZE), ""},
		{wrap(syscall.EINVAL), ""},
		{wrap(syscall.ECONNREFUSED), ""},
		{wrap(syscall.EACCES), ""},
		{net.ErrClosed, ""},
		{errors.New("other"), ""},
	} {
		got, ok := tunnel.TransientSendErrno(tc.err)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("%v: %q, %v; want %q", tc.err, got, ok, tc.want)
		}
	}
	if got := len(tunnel.QUICSendErrnos()); got != 6 {
		t.Errorf("QUICSendErrnos has %d names, want 6", got)
	}
}
