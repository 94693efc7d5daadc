package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process. Every child runs in a process group of its
// own, dies with the bench (Pdeathsig) and is stopped by stop or by the
// bench's cleanup, whichever comes first.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string

	done chan struct{} // closed when the process has exited
	werr error         // Wait's result, valid after done

	lineMu sync.Mutex
	lines  []string // stdout lines, for processes whose output we parse
	lineCh chan struct{}
}

// spawn starts argv with its output in logs/NAME.log. Stdout lines are also
// kept for waitLine.
func (b *bench) spawn(name string, argv []string, opts ...func(*exec.Cmd)) (*proc, error) {
	if err := b.ctx.Err(); err != nil {
		return nil, err
	}
	logPath := filepath.Join(b.dir, "logs", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = b.dir
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	for _, o := range opts {
		o(cmd)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), lineCh: make(chan struct{}, 1)}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd.Stdout = pw
	b.record("setup", argv)
	if err := cmd.Start(); err != nil {
		logf.Close()
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close()
	b.track(p)
	var outDone sync.WaitGroup
	outDone.Add(1)
	go func() {
		defer outDone.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			p.lineMu.Lock()
			if len(p.lines) < 1000 {
				p.lines = append(p.lines, line)
			}
			p.lineMu.Unlock()
			select {
			case p.lineCh <- struct{}{}:
			default:
			}
		}
		_, _ = io.Copy(io.Discard, pr)
		pr.Close()
	}()
	go func() {
		p.werr = cmd.Wait()
		outDone.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// tail returns the last lines of the process log, for error messages.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// waitLine waits for a stdout line matching re and returns its submatches.
func (p *proc) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.lineMu.Lock()
		lines := p.lines[seen:]
		seen = len(p.lines)
		p.lineMu.Unlock()
		for _, l := range lines {
			if m := re.FindStringSubmatch(l); m != nil {
				return m, nil
			}
		}
		select {
		case <-p.lineCh:
		case <-p.done:
			// Drain lines written just before the exit.
			p.lineMu.Lock()
			rest := p.lines[seen:]
			p.lineMu.Unlock()
			for _, l := range rest {
				if m := re.FindStringSubmatch(l); m != nil {
					return m, nil
				}
			}
			return nil, fmt.Errorf("%s exited (%v): %s", p.name, p.werr, p.tail(3))
		case <-deadline.C:
			return nil, fmt.Errorf("%s: no line matching %q within %s: %s", p.name, re, timeout, p.tail(3))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// waitFor polls cond every 50ms until it holds, the process dies or the
// timeout passes.
func waitFor(ctx context.Context, p *proc, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited (%v) before %s: %s", p.name, p.werr, what, p.tail(3))
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %s waiting for %s", timeout, what)
			if p != nil {
				msg += ": " + p.tail(3)
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// redisProbe is a GET of a key that never exists; the reply is "$-1\r\n"
// on every path (nutcracker refuses PING-less inline commands, so the probe
// is a multibulk GET).
var redisProbe = []byte("*2\r\n$3\r\nGET\r\n$11\r\nbench:probe\r\n")

// probeRedis sends one GET through addr and checks the reply.
func probeRedis(addr string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write(redisProbe); err != nil {
		return err
	}
	var buf [5]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return err
	}
	if !bytes.Equal(buf[:], []byte("$-1\r\n")) {
		return fmt.Errorf("unexpected reply %q", buf[:])
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago; the
// callers start a process on it and retry on a bind failure. For QUIC the
// port must be free for UDP too.
func freePort(udpToo bool) (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if udpToo {
			u, err := net.ListenPacket("udp", l.Addr().String())
			if err != nil {
				l.Close()
				continue
			}
			u.Close()
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("no free loopback port")
}

// rssKiB returns VmRSS of pid in KiB.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				return strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// descendants returns pid and every process below it.
func descendants(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	for _, e := range ents {
		id, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(f[1])
		parent[id] = pp
	}
	out := []int{pid}
	for changed := true; changed; {
		changed = false
		in := map[int]bool{}
		for _, p := range out {
			in[p] = true
		}
		for id, pp := range parent {
			if in[pp] && !in[id] {
				out = append(out, id)
				changed = true
			}
		}
	}
	return out
}
