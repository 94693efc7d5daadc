package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Memcached is a memcached process listening on 127.0.0.1 (TCP only).
//
// Stop and Restart report failures to the testing.TB given to
// StartMemcached, so call them from that test's goroutine.
type Memcached struct {
	// Addr is "127.0.0.1:Port".
	Addr string
	Port int

	t       testing.TB
	bin     string
	args    []string
	logPath string

	mu    sync.Mutex // guards the following
	proc  *proc      // current or last run
	admin *mcConn    // nil while stopped
}

// mcConn is a memcached text protocol connection.
type mcConn struct {
	mu sync.Mutex // guards the following
	c  net.Conn
	br *bufio.Reader
}

// StartMemcached starts memcached on 127.0.0.1 with UDP disabled
// (-l 127.0.0.1 -p PORT -U 0). args are appended, e.g. "-m", "16".
func StartMemcached(t testing.TB, args ...string) *Memcached {
	t.Helper()
	return startMemcached(t, args, freePorts)
}

func startMemcached(t testing.TB, extra []string, pick func(int) ([]int, error)) *Memcached {
	t.Helper()
	m := &Memcached{t: t, bin: RequireBinary(t, "memcached")}
	m.logPath = filepath.Join(t.TempDir(), "memcached.log")
	t.Cleanup(m.Stop)
	for attempt := 1; ; attempt++ {
		ports, err := pick(1)
		if err != nil {
			t.Fatalf("testenv: pick free port: %v", err)
		}
		m.Port = ports[0]
		m.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port))
		m.args = []string{"-l", "127.0.0.1", "-p", strconv.Itoa(m.Port), "-U", "0"}
		if os.Geteuid() == 0 {
			m.args = append(m.args, "-u", "root") // memcached refuses root otherwise
		}
		m.args = append(m.args, extra...)
		m.mu.Lock()
		err = m.startLocked()
		m.mu.Unlock()
		if err == nil {
			return m
		}
		if errors.Is(err, errAddrInUse) && attempt < bindAttempts {
			t.Logf("testenv: memcached port %d taken before the server bound it, retrying with another (attempt %d/%d)", m.Port, attempt, bindAttempts)
			continue
		}
		t.Fatalf("testenv: start memcached: %v", err)
	}
}

// startLocked starts the process and waits until it answers as itself.
func (m *Memcached) startLocked() error {
	p, admin, err := startServer("memcached", m.Addr, m.bin, m.args, m.logPath, m.dialAdmin, (*proc).kill)
	if p != nil {
		m.proc = p
	}
	if err != nil {
		return err
	}
	m.admin = admin
	return nil
}

// dialAdmin connects and checks that the server answering is process pid.
func (m *Memcached) dialAdmin(ctx context.Context, pid int) (*mcConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", m.Addr)
	if err != nil {
		return nil, err
	}
	mc := &mcConn{c: c, br: bufio.NewReader(c)}
	stats, err := mc.stats(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	if got := stats["pid"]; got != strconv.Itoa(pid) {
		c.Close()
		return nil, fmt.Errorf("%s is answered by pid %s, not by our server (pid %d)", m.Addr, got, pid)
	}
	return mc, nil
}

// roundTrip sends req and reads reply lines until one for which last
// returns true. Lines are returned without "\r\n".
func (mc *mcConn) roundTrip(ctx context.Context, req string, last func(string) bool) ([]string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	deadline := time.Now().Add(cmdTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// Cancelling ctx interrupts a blocked read or write.
	defer context.AfterFunc(ctx, func() { mc.c.SetDeadline(time.Unix(1, 0)) })()
	if err := mc.c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(mc.c, req); err != nil {
		return nil, err
	}
	var lines []string
	for {
		l, err := mc.br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		l = strings.TrimSuffix(l, "\r\n")
		lines = append(lines, l)
		if last(l) {
			return lines, nil
		}
	}
}

func isMCError(l string) bool {
	return l == "ERROR" || strings.HasPrefix(l, "CLIENT_ERROR") || strings.HasPrefix(l, "SERVER_ERROR")
}

func (mc *mcConn) stats(ctx context.Context) (map[string]string, error) {
	lines, err := mc.roundTrip(ctx, "stats\r\n", func(l string) bool { return l == "END" || isMCError(l) })
	if err != nil {
		return nil, err
	}
	st := make(map[string]string)
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "STAT" {
			st[f[1]] = f[2]
		} else if isMCError(l) {
			return nil, fmt.Errorf("stats: %s", l)
		}
	}
	return st, nil
}

// conn returns the admin connection, dialing a new one if the last failed.
func (m *Memcached) conn(ctx context.Context) (*mcConn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.admin != nil {
		return m.admin, nil
	}
	if m.proc == nil || m.proc.exited() {
		return nil, fmt.Errorf("memcached %s is stopped", m.Addr)
	}
	mc, err := m.dialAdmin(ctx, m.proc.pid())
	if err != nil {
		return nil, fmt.Errorf("reconnect admin connection: %w", err)
	}
	m.admin = mc
	return mc, nil
}

// roundTrip runs a request on the admin connection, dropping the connection
// after an I/O error.
func (m *Memcached) roundTrip(t testing.TB, req string, last func(string) bool) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	mc, err := m.conn(ctx)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	lines, err := mc.roundTrip(ctx, req, last)
	if err != nil {
		m.mu.Lock()
		if m.admin == mc {
			mc.c.Close()
			m.admin = nil
		}
		m.mu.Unlock()
		t.Fatalf("testenv: memcached %s: %v", m.Addr, err)
	}
	return lines
}

// checkKey fails the test if key is not a valid memcached text protocol key.
func checkKey(t testing.TB, key string) {
	t.Helper()
	if key == "" || len(key) > 250 || strings.ContainsFunc(key, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		t.Fatalf("testenv: invalid memcached key %q", key)
	}
}

// Set stores val under key (flags 0, no expiry) and fails the test unless
// the server answers STORED.
func (m *Memcached) Set(t testing.TB, key, val string) {
	t.Helper()
	checkKey(t, key)
	req := fmt.Sprintf("set %s 0 0 %d\r\n%s\r\n", key, len(val), val)
	lines := m.roundTrip(t, req, func(string) bool { return true })
	if lines[0] != "STORED" {
		t.Fatalf("testenv: memcached %s: set %q: %s", m.Addr, key, lines[0])
	}
}

// Get returns the value stored under key and whether it was found.
func (m *Memcached) Get(t testing.TB, key string) (string, bool) {
	t.Helper()
	checkKey(t, key)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	mc, err := m.conn(ctx)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	val, ok, err := mc.get(ctx, key)
	if err != nil {
		m.mu.Lock()
		if m.admin == mc {
			mc.c.Close()
			m.admin = nil
		}
		m.mu.Unlock()
		t.Fatalf("testenv: memcached %s: get %q: %v", m.Addr, key, err)
	}
	return val, ok
}

// get reads "VALUE key flags bytes\r\ndata\r\nEND\r\n" or "END\r\n". The
// data block is read by length, since it may contain "\r\n".
func (mc *mcConn) get(ctx context.Context, key string) (string, bool, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	deadline := time.Now().Add(cmdTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// Cancelling ctx interrupts a blocked read or write.
	defer context.AfterFunc(ctx, func() { mc.c.SetDeadline(time.Unix(1, 0)) })()
	if err := mc.c.SetDeadline(deadline); err != nil {
		return "", false, err
	}
	if _, err := io.WriteString(mc.c, "get "+key+"\r\n"); err != nil {
		return "", false, err
	}
	line, err := mc.br.ReadString('\n')
	if err != nil {
		return "", false, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "END" {
		return "", false, nil
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "VALUE" || f[1] != key {
		return "", false, fmt.Errorf("unexpected reply %q", line)
	}
	n, err := strconv.Atoi(f[3])
	if err != nil || n < 0 {
		return "", false, fmt.Errorf("unexpected reply %q", line)
	}
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(mc.br, buf); err != nil {
		return "", false, err
	}
	end, err := mc.br.ReadString('\n')
	if err != nil {
		return "", false, err
	}
	if end != "END\r\n" {
		return "", false, fmt.Errorf("unexpected reply %q after value", end)
	}
	return string(buf[:n]), true, nil
}

// Stats returns the server's general-purpose statistics (stats command).
func (m *Memcached) Stats(t testing.TB) map[string]string {
	t.Helper()
	lines := m.roundTrip(t, "stats\r\n", func(l string) bool { return l == "END" || isMCError(l) })
	st := make(map[string]string)
	for _, l := range lines {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "STAT" {
			st[f[1]] = f[2]
		} else if isMCError(l) {
			t.Fatalf("testenv: memcached %s: stats: %s", m.Addr, l)
		}
	}
	return st
}

// TotalConnections returns how many connections the server opened since it
// started (stats total_connections). The absolute value includes
// testenv's start-up probe; reading it opens no connection, so compare two
// readings to count connections made in between. Restart resets it.
func (m *Memcached) TotalConnections(t testing.TB) int64 {
	t.Helper()
	return m.statInt(t, "total_connections")
}

// CurrentConnections returns the number of open client connections (stats
// curr_connections), not counting testenv's admin connection.
func (m *Memcached) CurrentConnections(t testing.TB) int {
	t.Helper()
	return int(m.statInt(t, "curr_connections")) - 1
}

func (m *Memcached) statInt(t testing.TB, name string) int64 {
	t.Helper()
	v, ok := m.Stats(t)[name]
	if !ok {
		t.Fatalf("testenv: memcached %s: stats has no %q", m.Addr, name)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("testenv: memcached %s: stats %q: %v", m.Addr, name, err)
	}
	return n
}

// Stop kills the server and waits for it to exit (memcached keeps nothing
// worth a graceful shutdown, which takes it a second). It is idempotent and
// also runs on cleanup.
func (m *Memcached) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.admin != nil {
		m.admin.c.Close()
		m.admin = nil
	}
	if m.proc != nil {
		m.proc.kill()
	}
}

// Restart stops the server if it is running and starts it again on the same
// port, empty.
func (m *Memcached) Restart() {
	m.t.Helper()
	m.Stop()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.startLocked(); err != nil {
		m.t.Fatalf("testenv: restart memcached on %s: %v", m.Addr, err)
	}
}
