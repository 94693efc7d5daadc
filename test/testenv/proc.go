package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

const (
	// readyTimeout bounds the wait for a started server to answer.
	readyTimeout = 10 * time.Second
	// stopGrace is how long a server gets to exit after SIGTERM before SIGKILL.
	stopGrace = 5 * time.Second
	// bindAttempts is how many fresh ports a start tries before giving up.
	bindAttempts = 5
	// pollInterval is the pause between two checks of a condition.
	pollInterval = 20 * time.Millisecond
	// logTailLines is how many log lines a failure message quotes.
	logTailLines = 40
)

// errAddrInUse reports that a server exited because its port was taken.
var errAddrInUse = errors.New("address already in use")

// proc is one run of a server process. Its output goes to a log file shared
// by every run of the same server; offset marks where this run began.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	offset  int64
	done    chan struct{} // closed once cmd.Wait returned
	waitErr error         // result of cmd.Wait, valid after done is closed
}

// startProc starts bin with args, appending its stdout and stderr to logPath.
func startProc(bin string, args []string, logPath string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close() // the child holds its own copy
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat log: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{cmd: cmd, logPath: logPath, offset: st.Size(), done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process id of this run.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to stopGrace, then SIGKILLs and waits. It is
// safe to call more than once.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	signalProc(p.cmd, sigTerm)
	p.waitOrKill()
}

// kill sends SIGKILL and waits. It is safe to call more than once.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	signalProc(p.cmd, sigKill)
	<-p.done
}

// waitOrKill waits up to stopGrace for the process to exit, then kills it.
func (p *proc) waitOrKill() {
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	signalProc(p.cmd, sigKill)
	<-p.done
}

// log returns the output of this run.
func (p *proc) log() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(p.offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	return string(b)
}

// logTail returns the last lines of this run's output, for failure messages.
func (p *proc) logTail() string {
	lines := strings.Split(strings.TrimRight(p.log(), "\n"), "\n")
	if len(lines) > logTailLines {
		lines = lines[len(lines)-logTailLines:]
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "--- log tail of %s (pid %d) ---\n", p.logPath, p.pid())
	for _, l := range lines {
		b.WriteString("  ")
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// exitError describes why the process exited; errAddrInUse when its port
// was taken.
func (p *proc) exitError() error {
	if strings.Contains(p.log(), "Address already in use") {
		return fmt.Errorf("server exited (%v): %w", p.waitErr, errAddrInUse)
	}
	return fmt.Errorf("server exited early: %v", p.waitErr)
}

// waitReady polls probe until it succeeds, the process exits or timeout
// elapses. Each probe gets a context bounded by the overall deadline.
func (p *proc) waitReady(timeout time.Duration, probe func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		// A probe stuck on a port someone else holds ends when we exit.
		select {
		case <-p.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return poll(ctx, p.done, func(ctx context.Context) error {
		if p.exited() {
			return p.exitError()
		}
		return probe(ctx)
	}, p.exitError)
}

// poll calls check until it returns nil, ctx ends, or stop is closed (then
// it returns stopped()). stop may be nil. The error of the last check is
// part of the timeout error.
func poll(ctx context.Context, stop <-chan struct{}, check func(ctx context.Context) error, stopped func() error) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-stop:
			return stopped()
		default:
		}
		select {
		case <-stop:
			return stopped()
		case <-ctx.Done():
			return fmt.Errorf("%w; last check: %v", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// startServer starts bin and waits until dial, given the new process's
// pid, reaches that very process; it returns the process and what dial
// returned. On failure the process is ended with halt (kill or stop) and
// the error carries the log tail, except errAddrInUse, which callers retry
// on another port.
func startServer[T any](what, addr, bin string, args []string, logPath string,
	dial func(ctx context.Context, pid int) (T, error), halt func(*proc)) (*proc, T, error) {
	var admin T
	p, err := startProc(bin, args, logPath)
	if err != nil {
		return nil, admin, err
	}
	err = p.waitReady(readyTimeout, func(ctx context.Context) error {
		a, err := dial(ctx, p.pid())
		if err != nil {
			return err
		}
		admin = a
		return nil
	})
	if err != nil {
		halt(p)
		if errors.Is(err, errAddrInUse) {
			return p, admin, err
		}
		return p, admin, fmt.Errorf("%s on %s: %w\n%s", what, addr, err, p.logTail())
	}
	return p, admin, nil
}
