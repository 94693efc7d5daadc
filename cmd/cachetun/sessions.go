package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
)

// sessions resolves the profiles of a connect (or exec) into one
// client.Options per gateway: profiles that name the same gateway, with
// the same transport, key, known_hosts and bind address, share a session.
func (c *ConnectCmd) sessions() ([]client.Options, error) {
	switch {
	case c.All && len(c.Profiles) > 1:
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("--all takes at most one PROFILE (whose gateway it uses)"),
			Hint: "run 'cachetun connect --all PROFILE' or 'cachetun connect --all --server HOST:PORT'"}
	case c.All:
		opts, err := c.options()
		if err != nil {
			return nil, err
		}
		opts.All, opts.Target, opts.Profile = true, "", ""
		return []client.Options{opts}, nil
	case len(c.Profiles) == 0:
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New(`expected "<profile>" or --all`),
			Hint: "run 'cachetun help " + c.command() + "' for its arguments and flags"}
	case c.Target != "" && len(c.Profiles) > 1:
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("--target applies to one PROFILE, and several were given"),
			Hint: "set target: in each profile, or run one connect per target"}
	}
	var (
		out  []client.Options
		keys []string
	)
	seen := map[string]bool{}
	for _, name := range c.Profiles {
		if seen[name] {
			continue
		}
		seen[name] = true
		opts, err := c.profileOptions(name)
		if err != nil {
			return nil, err
		}
		t := client.TargetOptions{Name: opts.Target, Profile: opts.Profile, LocalPort: opts.LocalPort}
		key := strings.Join([]string{strings.Join(opts.Servers, ","), opts.Transport, opts.Identity, opts.KnownHosts, opts.Bind, opts.DeadAfter.String()}, "\x00")
		i := indexOf(keys, key)
		if i < 0 {
			opts.LocalPort = nil // per target
			out = append(out, opts)
			keys = append(keys, key)
			i = len(out) - 1
		}
		out[i].Targets = append(out[i].Targets, t)
	}
	for i := range out {
		if len(out[i].Targets) > 1 {
			out[i].Profile = ""
		}
		out[i].Target = out[i].Targets[0].Name
	}
	return out, nil
}

// command is the name of the command being run, for hints.
func (c *ConnectCmd) command() string {
	if c.cmdName == "" {
		return "connect"
	}
	return c.cmdName
}

func indexOf(l []string, s string) int {
	for i, x := range l {
		if x == s {
			return i
		}
	}
	return -1
}

// view is how a connect shows what it does.
type view int

const (
	viewPlain view = iota // the table once, then log lines (no terminal)
	viewJSON              // JSON lines on stdout
	viewTTY               // a live status on the terminal
	viewExec              // the table on stderr: stdout is the command's
)

// pickView chooses the view: --json wins, then a terminal on stdout.
func pickView(e *env, jsonOut, exec bool) view {
	switch {
	case jsonOut:
		return viewJSON
	case exec:
		return viewExec
	case isTerminal(e.stdout):
		return viewTTY
	}
	return viewPlain
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// runSessions runs one client per session (a client.Group) until ctx
// ends (or whileUp returns, when set: exec), and shows it as the view
// says. Every session must come up, or all are stopped and the first
// error is returned. It returns once the group's Run has.
func runSessions(ctx context.Context, e *env, sessions []client.Options, jsonOut bool, whileUp func(context.Context, []client.TargetEndpoints) error) (err error) {
	v := pickView(e, jsonOut, whileUp != nil)
	var ui *liveUI
	log := e.log
	if v == viewTTY {
		ui = newLiveUI(e.stdout, e.log.Handler())
		log = ui.logger()
	}
	jw := &jsonLines{w: e.stdout}
	if v == viewJSON {
		// A script reading stdout learns why the connect ended, also
		// when it never came up: one "failed" line with the error and
		// its fix (stderr has the same as text). A stop by a signal is
		// no failure.
		defer func() {
			// A revocation has its own "revoked" line already.
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, client.ErrRevoked) {
				jw.final(client.Event{Kind: client.EventFailed, Time: time.Now(), Error: strings.TrimSuffix(err.Error(), "."), Hint: control.HintOf(err)})
			}
		}()
	}
	for i := range sessions {
		opts := &sessions[i]
		opts.Logger = log
		opts.Notice = e.stderr
		opts.Passphrase = terminalPassphrase(e)
		switch v {
		case viewPlain:
			opts.Out = e.stdout
		case viewExec:
			opts.Out = e.stderr
		case viewJSON:
			opts.OnEvent = jw.event
		case viewTTY:
			opts.OnEvent = ui.event
		}
	}
	g, err := client.NewGroup(sessions)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var runErr error // set before done closes
	done := make(chan struct{})
	go func() {
		defer close(done)
		runErr = g.Run(rctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case <-g.Ready():
	case <-done:
		if runErr == nil {
			return ctx.Err()
		}
		return runErr
	}
	all := g.Endpoints()
	switch v {
	case viewJSON:
		jw.up(all)
	case viewTTY:
		ui.start(g.Clients())
		defer ui.stop()
	}
	if whileUp == nil {
		// A client that returns (ctx done, or a final error such as a
		// revocation) has ended them all.
		<-done
		return runErr
	}
	res := make(chan error, 1)
	go func() { res <- whileUp(rctx, all) }()
	select {
	case err := <-res:
		return err
	case <-done:
		cancel() // a session gave up (revoked): the command loses its ports
		<-res
		if runErr == nil {
			return errors.New("the session to the gateway ended")
		}
		return runErr
	}
}

// jsonLines writes one JSON object per line: the endpoints once every
// session is up, then each client event.
type jsonLines struct {
	mu    sync.Mutex // guards the following
	w     io.Writer
	ready bool // the up line was written
}

func (j *jsonLines) up(all []client.TargetEndpoints) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.ready = true
	j.writeLocked(client.Event{Kind: client.EventUp, Time: time.Now(), Targets: all})
}

// final writes the last line, whether or not the up line was written.
func (j *jsonLines) final(ev client.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.writeLocked(ev)
}

// event is a client's OnEvent: it must not block for long (a write to
// stdout).
func (j *jsonLines) event(ev client.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.ready || ev.Kind == client.EventUp {
		return // the up line comes when every session is up
	}
	j.writeLocked(ev)
}

func (j *jsonLines) writeLocked(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	fmt.Fprintf(j.w, "%s\n", b)
}
