package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"unicode"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
)

// ExecCmd brings the ports up, runs a command with them in its
// environment and exits with the command's status.
type ExecCmd struct {
	ConnectCmd `embed:""`

	// Command is what follows "--" (split off before parsing, see run).
	Command []string `kong:"-"`
}

// exitStatus carries a command's exit status out of Run.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("command exited with status %d", e.code) }

// Run connects, runs the command and returns its status; SIGINT and
// SIGTERM go to the command, and the ports close when it exits.
func (c *ExecCmd) Run(e *env) error {
	c.cmdName = "exec"
	if len(c.Command) == 0 {
		// The variables are quoted for sh -c: unquoted, the user's own
		// shell would expand them (to nothing) before exec runs.
		prof, name := "PROFILE", "<TARGET>"
		if len(c.Profiles) > 0 {
			prof = c.Profiles[0]
			name = envName(prof)
			if c.Target != "" {
				name = envName(c.Target)
			}
		}
		return &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("no command to run"), Hint: fmt.Sprintf(
			`put it after --: cachetun exec %s -- sh -c 'redis-cli -h "$CACHETUN_%s_HOST" -p "$CACHETUN_%s_PORT"'`, prof, name, name)}
	}
	if c.JSON {
		return &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("--json is for connect, ls and doctor"), Hint: "drop --json: exec hands the endpoints to the command in its environment"}
	}
	sessions, err := c.sessions()
	if err != nil {
		return err
	}
	// The command learns its ports from the environment, so they need
	// not be the cache's own: free ones, unless local_port: or
	// --local-port says otherwise, never collide with a local redis.
	zero := 0
	for i := range sessions {
		if sessions[i].LocalPort == nil {
			sessions[i].LocalPort = &zero
		}
		for j := range sessions[i].Targets {
			if sessions[i].Targets[j].LocalPort == nil {
				sessions[i].Targets[j].LocalPort = &zero
			}
		}
	}
	path, err := exec.LookPath(c.Command[0])
	if err != nil {
		return &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("run %q: %w", c.Command[0], err), Hint: "check the command's name and PATH"}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A signal before the ports are up stops the connect.
	early := make(chan struct{})
	var once sync.Once
	up := func() { once.Do(func() { close(early) }) }
	defer up()
	go func() {
		select {
		case <-e.signals.stop:
			cancel()
		case <-early:
		}
	}()
	return runSessions(ctx, e, sessions, false, func(ctx context.Context, eps []client.TargetEndpoints) error {
		up()
		cmd := exec.Command(path, c.Command[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = e.stdin, e.stdout, e.stderr
		cmd.Env = append(os.Environ(), execEnv(eps)...)
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("run %q: %w", c.Command[0], err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for {
			select {
			case sig := <-e.signals.stop:
				_ = cmd.Process.Signal(sig)
			case <-ctx.Done():
				// The session gave up: the command has no ports any more.
				_ = cmd.Process.Signal(os.Interrupt)
				<-done
				return ctx.Err()
			case err := <-done:
				var ee *exec.ExitError
				switch {
				case errors.As(err, &ee):
					return &exitStatus{code: commandStatus(ee)}
				case err != nil:
					return fmt.Errorf("run %q: %w", c.Command[0], err)
				}
				return nil
			}
		}
	})
}

// execEnv names the endpoints for the command (README, "Daily use"):
//
//	CACHETUN_<TARGET>_ADDR   host:port of the first node
//	CACHETUN_<TARGET>_HOST, CACHETUN_<TARGET>_PORT  the same, split
//	CACHETUN_<TARGET>_NODES  every node's host:port, comma-separated
//	REDIS_URL                redis://host:port when one target is redis or redis-cluster
//	MEMCACHED_SERVERS        the nodes when one target is memcached
func execEnv(eps []client.TargetEndpoints) []string {
	var env []string
	var redis, memcached []client.TargetEndpoints
	for _, t := range eps {
		if len(t.Nodes) == 0 {
			continue
		}
		p := "CACHETUN_" + envName(t.Name) + "_"
		first := t.Nodes[0].Local
		host, port := splitLocal(first)
		var nodes []string
		for _, n := range t.Nodes {
			nodes = append(nodes, n.Local)
		}
		env = append(env, p+"ADDR="+first, p+"HOST="+host, p+"PORT="+port, p+"NODES="+strings.Join(nodes, ","))
		switch t.Type {
		case "redis", "redis-cluster":
			redis = append(redis, t)
		case "memcached":
			memcached = append(memcached, t)
		}
	}
	if len(redis) == 1 {
		env = append(env, "REDIS_URL=redis://"+redis[0].Nodes[0].Local)
	}
	if len(memcached) == 1 {
		var nodes []string
		for _, n := range memcached[0].Nodes {
			nodes = append(nodes, n.Local)
		}
		env = append(env, "MEMCACHED_SERVERS="+strings.Join(nodes, ","))
	}
	return env
}

// envName upper-cases a target name; anything but letters and digits
// becomes '_'.
func envName(s string) string {
	return strings.Map(func(r rune) rune {
		if r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			return unicode.ToUpper(r)
		}
		return '_'
	}, s)
}

func splitLocal(addr string) (host, port string) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return addr, ""
	}
	return strings.Trim(addr[:i], "[]"), addr[i+1:]
}

// commandStatus is the status a shell would give: the exit code, or 128+N
// for a command killed by signal N (130 for SIGINT, 143 for SIGTERM).
func commandStatus(ee *exec.ExitError) int {
	if code := ee.ExitCode(); code >= 0 {
		return code
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return 128 + int(syscall.SIGTERM)
}
