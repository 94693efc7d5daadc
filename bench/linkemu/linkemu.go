// Package linkemu is a user-space link emulator for the WAN bench: a TUN
// device in each of two network namespaces and a pump per direction that
// carries raw IP packets between them with a one-way delay, a rate limit
// with a bounded queue (tail drop), random loss and a switch that cuts the
// link.
//
// It exists because the kernels the bench runs on may lack the netem, tbf
// and fq qdiscs; /dev/net/tun is all it needs.
//
// Each direction is one reader goroutine and one writer goroutine joined
// by a bounded FIFO. The reader stamps a packet with a monotonic arrival
// time, drops it if the link is cut, the loss draw says so or the
// bottleneck queue is full, and otherwise computes when the link would
// finish serialising it (the rate limiter: a packet starts when the one
// before it has left) and when it arrives at the far end (that plus the
// one-way delay). Due times are monotonic in arrival order, so a FIFO
// releases packets in order and the writer only sleeps until the head is
// due. Memory is bounded by the FIFO's packet count times the MTU.
package linkemu

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MTU is the TUN devices' MTU and the largest packet carried.
const MTU = 1500

// maxInFlight bounds the packets held per direction (queued for the
// bottleneck or travelling the delay line): 32,768 × 1,500 B is 48 MiB at
// worst, more than 500 Mbit/s × 200 ms + a queue needs.
const maxInFlight = 32768

// Dir is one direction's shape.
type Dir struct {
	// Delay is the one-way propagation delay.
	Delay time.Duration
	// RateBps is the link rate in bits per second; 0 means unlimited.
	RateBps int64
	// QueueBytes bounds the bottleneck queue (bytes waiting to be
	// serialised); a packet that does not fit is dropped (tail drop).
	// 0 means no bound beyond maxInFlight.
	QueueBytes int
	// Loss is the probability that a packet is dropped at random.
	Loss float64
}

// Config describes the link between namespaces A and B.
type Config struct {
	// NetnsA and NetnsB are the names of existing namespaces (ip netns).
	NetnsA, NetnsB string
	// AddrA and AddrB are the TUN devices' addresses (IPv4, no prefix);
	// each is the other's point-to-point peer.
	AddrA, AddrB string
	// Dev is the TUN devices' name in both namespaces ("emu0" if empty).
	Dev string
	// AtoB and BtoA shape each direction.
	AtoB, BtoA Dir
	// Seed seeds the loss draws (0: a random seed).
	Seed uint64
}

// Counters are one direction's packet counts.
type Counters struct {
	// Received counts packets read from the sending side's TUN.
	Received int64
	// Delivered counts packets written to the receiving side's TUN.
	Delivered int64
	// Lost counts random-loss drops, QueueDrops tail drops at the
	// bottleneck (or a full delay line), CutDrops drops while cut.
	Lost, QueueDrops, CutDrops int64
}

// Link is a running emulated link. Close stops it and removes the
// devices.
type Link struct {
	cfg    Config
	fdA    *os.File
	fdB    *os.File
	ab, ba *pump
	cut    atomic.Bool
	wg     sync.WaitGroup
	once   sync.Once
}

// New creates a TUN device in each namespace, addresses them and starts
// carrying packets.
func New(cfg Config) (*Link, error) {
	if cfg.Dev == "" {
		cfg.Dev = "emu0"
	}
	for _, d := range []Dir{cfg.AtoB, cfg.BtoA} {
		if d.Loss < 0 || d.Loss >= 1 || d.Delay < 0 || d.RateBps < 0 || d.QueueBytes < 0 {
			return nil, fmt.Errorf("configure link: bad direction %+v (want 0 ≤ loss < 1 and no negative delay, rate or queue)", d)
		}
	}
	l := &Link{cfg: cfg}
	var err error
	if l.fdA, err = openTUN(cfg.NetnsA, cfg.Dev); err != nil {
		return nil, err
	}
	if l.fdB, err = openTUN(cfg.NetnsB, cfg.Dev); err != nil {
		l.fdA.Close()
		return nil, err
	}
	for _, s := range []struct{ ns, local, peer string }{{cfg.NetnsA, cfg.AddrA, cfg.AddrB}, {cfg.NetnsB, cfg.AddrB, cfg.AddrA}} {
		for _, argv := range [][]string{
			{"ip", "-n", s.ns, "addr", "add", s.local, "peer", s.peer, "dev", cfg.Dev},
			{"ip", "-n", s.ns, "link", "set", cfg.Dev, "mtu", fmt.Sprint(MTU), "up"},
		} {
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				l.fdA.Close()
				l.fdB.Close()
				return nil, fmt.Errorf("configure TUN device: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
			}
		}
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	l.ab = newPump(l, l.fdA, l.fdB, cfg.AtoB, seed)
	l.ba = newPump(l, l.fdB, l.fdA, cfg.BtoA, seed^0x9e3779b97f4a7c15)
	for _, p := range []*pump{l.ab, l.ba} {
		l.wg.Add(2)
		go func() { defer l.wg.Done(); p.read() }()
		go func() { defer l.wg.Done(); p.write() }()
	}
	return l, nil
}

// Cut cuts the link (true) or restores it (false): while cut, every
// packet is dropped, those already on the wire included.
func (l *Link) Cut(cut bool) { l.cut.Store(cut) }

// SetLoss changes both directions' random loss.
func (l *Link) SetLoss(p float64) {
	l.ab.loss.Store(uint64(p * (1 << 53)))
	l.ba.loss.Store(uint64(p * (1 << 53)))
}

// AtoB and BtoA return each direction's counters.
func (l *Link) AtoB() Counters { return l.ab.counters() }
func (l *Link) BtoA() Counters { return l.ba.counters() }

// Close stops the pumps and closes the TUN devices, which removes them.
func (l *Link) Close() error {
	l.once.Do(func() {
		l.fdA.Close()
		l.fdB.Close()
		for _, p := range []*pump{l.ab, l.ba} {
			close(p.stop)
		}
		l.wg.Wait()
	})
	return nil
}

type packet struct {
	buf []byte
	n   int
	due time.Time
}

type pump struct {
	l       *Link
	in, out *os.File
	d       Dir
	loss    atomic.Uint64 // probability × 2^53
	rng     *rand.Rand
	q       chan packet
	pool    sync.Pool
	stop    chan struct{}

	linkFree time.Time // when the bottleneck finishes the last accepted packet

	received, delivered, lost, queueDrops, cutDrops atomic.Int64
}

func newPump(l *Link, in, out *os.File, d Dir, seed uint64) *pump {
	p := &pump{l: l, in: in, out: out, d: d, rng: rand.New(rand.NewPCG(seed, seed>>1|1)),
		q: make(chan packet, maxInFlight), stop: make(chan struct{})}
	p.loss.Store(uint64(d.Loss * (1 << 53)))
	p.pool.New = func() any { b := make([]byte, MTU+64); return &b }
	return p
}

func (p *pump) counters() Counters {
	return Counters{Received: p.received.Load(), Delivered: p.delivered.Load(), Lost: p.lost.Load(),
		QueueDrops: p.queueDrops.Load(), CutDrops: p.cutDrops.Load()}
}

// serialise is how long the link takes to send n bytes.
func (p *pump) serialise(n int) time.Duration {
	if p.d.RateBps == 0 {
		return 0
	}
	return time.Duration(int64(n) * 8 * int64(time.Second) / p.d.RateBps)
}

func (p *pump) read() {
	defer close(p.q)
	for {
		bp := p.pool.Get().(*[]byte)
		n, err := p.in.Read(*bp)
		if err != nil {
			p.pool.Put(bp)
			return // closed
		}
		now := time.Now() // carries the monotonic clock
		p.received.Add(1)
		if p.l.cut.Load() {
			p.cutDrops.Add(1)
			p.pool.Put(bp)
			continue
		}
		if l := p.loss.Load(); l > 0 && p.rng.Uint64()>>11 < l {
			p.lost.Add(1)
			p.pool.Put(bp)
			continue
		}
		start := now
		if p.linkFree.After(now) {
			start = p.linkFree
			if p.d.QueueBytes > 0 && p.d.RateBps > 0 {
				backlog := int64(p.linkFree.Sub(now)) * p.d.RateBps / 8 / int64(time.Second)
				if backlog+int64(n) > int64(p.d.QueueBytes) {
					p.queueDrops.Add(1)
					p.pool.Put(bp)
					continue
				}
			}
		}
		left := start.Add(p.serialise(n))
		pk := packet{buf: *bp, n: n, due: left.Add(p.d.Delay)}
		select {
		case p.q <- pk:
			p.linkFree = left
		default: // the delay line is full
			p.queueDrops.Add(1)
			p.pool.Put(bp)
		}
	}
}

func (p *pump) write() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for pk := range p.q {
		if wait := time.Until(pk.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-p.stop:
				return
			}
		}
		if p.l.cut.Load() {
			p.cutDrops.Add(1)
		} else if _, err := p.out.Write(pk.buf[:pk.n]); err == nil {
			p.delivered.Add(1)
		} else if errors.Is(err, os.ErrClosed) {
			return
		}
		b := pk.buf
		p.pool.Put(&b)
	}
}

// openTUN creates TUN device dev in namespace ns and returns its file,
// made non-blocking so that Go's poller serves it and Close wakes a
// blocked Read. The device belongs to the namespace the creating thread
// was in; the file descriptor works from any namespace afterwards.
func openTUN(ns, dev string) (*os.File, error) {
	var fd int
	err := InNetns(ns, func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(dev)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("name TUN device %q: %w", dev, err)
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(ifr))); e != 0 {
			unix.Close(fd)
			return fmt.Errorf("create TUN device %q (TUNSETIFF): %w", dev, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create TUN device in network namespace %s: %w", ns, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+dev), nil
}

// InNetns runs fn on a thread inside network namespace ns (a name under
// /run/netns) and returns the thread to its own namespace. Sockets and
// devices fn creates stay in ns.
func InNetns(ns string, fn func() error) error {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", ns, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked: Go ends it with the goroutine rather
		// than run other goroutines in the wrong namespace.
		return fmt.Errorf("leave network namespace %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// AddNetns creates network namespace name with its loopback up.
func AddNetns(name string) error {
	for _, argv := range [][]string{{"ip", "netns", "add", name}, {"ip", "-n", name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("create network namespace: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// DelNetns deletes network namespace name (and every device in it).
func DelNetns(name string) error {
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("delete network namespace %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
