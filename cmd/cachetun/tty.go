package main

// The live status of connect on a terminal: the endpoint table, redrawn
// when the topology changes, with the transport, the session state and
// the open connections. Log lines print above it. bubbletea owns the
// screen; it reads no input, so Ctrl-C stays a SIGINT that drains.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/cachetun/cachetun/client"
)

// liveRefresh is how often the status line is redrawn without an event
// (the open connection count changes without one).
const liveRefresh = 500 * time.Millisecond

type liveUI struct {
	out  io.Writer
	base slog.Handler // decides the level

	mu      sync.Mutex // guards the following
	prog    *tea.Program
	pending []string // log lines before the program runs
	done    chan struct{}
}

func newLiveUI(out io.Writer, base slog.Handler) *liveUI {
	return &liveUI{out: out, base: base}
}

// logger writes log lines above the live view.
func (u *liveUI) logger() *slog.Logger {
	return slog.New(&lineHandler{ui: u, base: u.base})
}

func (u *liveUI) println(s string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.prog == nil {
		u.pending = append(u.pending, s)
		return
	}
	u.prog.Println(s)
}

// event is a client's OnEvent: it tells the view to redraw.
func (u *liveUI) event(ev client.Event) {
	u.mu.Lock()
	p := u.prog
	u.mu.Unlock()
	if p != nil {
		go p.Send(redraw{ev: ev}) // Send blocks until the program reads it
	}
}

func (u *liveUI) start(clients []*client.Client) {
	m := &liveModel{clients: clients}
	p := tea.NewProgram(m, tea.WithOutput(u.out), tea.WithInput(nil), tea.WithoutSignalHandler())
	u.mu.Lock()
	u.prog = p
	u.done = make(chan struct{})
	pending := u.pending
	u.pending = nil
	u.mu.Unlock()
	go func() {
		defer close(u.done)
		_, _ = p.Run()
	}()
	for _, l := range pending {
		p.Println(l)
	}
}

func (u *liveUI) stop() {
	u.mu.Lock()
	p, done := u.prog, u.done
	u.mu.Unlock()
	if p == nil {
		return
	}
	p.Quit()
	<-done
}

type redraw struct{ ev client.Event }
type tick struct{}

type liveModel struct {
	clients []*client.Client
	changes int    // topology changes seen
	note    string // the last event worth a word
}

func (m *liveModel) Init() tea.Cmd { return tickCmd() }

func tickCmd() tea.Cmd {
	return tea.Tick(liveRefresh, func(time.Time) tea.Msg { return tick{} })
}

func (m *liveModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tick:
		return m, tickCmd()
	case redraw:
		switch msg.ev.Kind {
		case client.EventTopology:
			m.changes++
			m.note = fmt.Sprintf("topology of %s changed at %s", msg.ev.Target, msg.ev.Time.Format("15:04:05"))
		case client.EventTargetRemoved:
			m.note = fmt.Sprintf("target %q is no longer available: %s", msg.ev.Target, msg.ev.Reason)
		case client.EventReconnecting:
			m.note = "session lost at " + msg.ev.Time.Format("15:04:05") + ": " + msg.ev.Error
		case client.EventReconnected:
			m.note = "session restored at " + msg.ev.Time.Format("15:04:05")
		case client.EventError:
			m.note = "reconnect failed: " + msg.ev.Error
		}
	}
	return m, nil
}

var (
	styleHeader = lipgloss.NewStyle().Bold(true)
	styleMaster = lipgloss.NewStyle().Foreground(lipgloss.Color("2"))
	styleOK     = lipgloss.NewStyle().Foreground(lipgloss.Color("2")).Bold(true)
	styleBad    = lipgloss.NewStyle().Foreground(lipgloss.Color("3")).Bold(true)
	styleDim    = lipgloss.NewStyle().Faint(true)
)

func (m *liveModel) View() tea.View { return tea.NewView(m.render()) }

func (m *liveModel) render() string {
	var b strings.Builder
	for _, cl := range m.clients {
		st := cl.Status()
		for _, t := range cl.Endpoints() {
			name := t.Profile
			if name == "" {
				name = t.Name
			}
			b.WriteString(styleHeader.Render(fmt.Sprintf("%s  %s  via %s %s", name, t.Type, st.Transport, st.Server)) + "\n")
			for _, n := range t.Nodes {
				line := fmt.Sprintf("  %s  ->  %s", n.Local, n.Node)
				role := n.Role
				if n.Slots != "" {
					role += "  slots " + n.Slots
				}
				switch {
				case n.Role == "master":
					line += "  " + styleMaster.Render(role)
				case role != "":
					line += "  " + role
				}
				b.WriteString(line + "\n")
			}
		}
		state := styleOK.Render("connected")
		if !st.Connected {
			state = styleBad.Render("reconnecting")
		}
		fmt.Fprintf(&b, "%s  %s  %d open connections\n", state, st.Transport, st.OpenConns)
	}
	if m.note != "" {
		b.WriteString(styleDim.Render(m.note) + "\n")
	}
	b.WriteString(styleDim.Render("Ctrl-C to stop") + "\n")
	return b.String()
}

// lineHandler formats records as the text handler does and prints them
// above the live view; base decides what is enabled.
type lineHandler struct {
	ui   *liveUI
	base slog.Handler
	// attrs and groups are replayed on a fresh text handler per record.
	attrs  []slog.Attr
	groups []string
}

func (h *lineHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.base.Enabled(ctx, l) }

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	var buf bytes.Buffer
	var th slog.Handler = slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	th = th.WithAttrs(h.attrs)
	for _, g := range h.groups {
		th = th.WithGroup(g)
	}
	if err := th.Handle(context.Background(), r); err != nil {
		return err
	}
	h.ui.println(strings.TrimRight(buf.String(), "\n"))
	return nil
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &n
}

func (h *lineHandler) WithGroup(g string) slog.Handler {
	n := *h
	n.groups = append(append([]string(nil), h.groups...), g)
	return &n
}
