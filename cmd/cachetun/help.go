package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/posener/complete"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
)

// fullVersion is what --version and 'cachetun version' print.
func fullVersion() string {
	return fmt.Sprintf("cachetun %s (%s %s/%s)", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// HelpCmd prints the help of the whole CLI or of one command.
type HelpCmd struct {
	Command []string `arg:"" optional:"" help:"Command to explain, e.g. 'connect' or 'server init'." placeholder:"COMMAND" predictor:"command"`
}

// Run prints the help 'cachetun COMMAND --help' would print.
func (h *HelpCmd) Run(k *kong.Context) error {
	ctx, err := kong.Trace(k.Kong, h.Command)
	if err != nil {
		return err
	}
	if ctx.Error != nil {
		return &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("help %s: %w", strings.Join(h.Command, " "), ctx.Error), Hint: "run 'cachetun help' for the list of commands"}
	}
	return ctx.PrintUsage(false)
}

// CompletionCmd prints a shell completion script.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"Shell: bash, zsh or fish." placeholder:"SHELL"`
}

// Completion scripts. Each one asks the binary itself: with COMP_LINE set,
// cachetun prints the candidates (kongplete, posener/complete v1), so the
// completions always match this binary's commands, flags and the profiles
// in the client config.
const (
	bashCompletion = "complete -o default -C %[1]q cachetun\n"
	zshCompletion  = "autoload -U +X bashcompinit && bashcompinit\ncomplete -o default -C %[1]q cachetun\n"
	fishCompletion = `function __complete_cachetun
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    set -lx COMP_POINT (string length -- "$COMP_LINE")
    %[1]q
end
complete -f -c cachetun -a "(__complete_cachetun)"
`
)

// Run prints the script; the README says where to put it.
func (c *CompletionCmd) Run(e *env) error {
	self, err := os.Executable()
	if err != nil {
		self = "cachetun"
	} else if abs, err := filepath.EvalSymlinks(self); err == nil {
		self = abs
	}
	script := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}[c.Shell]
	fmt.Fprintf(e.stdout, script, self)
	return nil
}

// completionPredictors complete profile and target names from the client
// config (CACHETUN_CONFIG, else the default path).
func completionPredictors(app *kong.Application) map[string]complete.Predictor {
	load := func() *client.Config {
		path := os.Getenv("CACHETUN_CONFIG")
		if path == "" {
			path = client.DefaultConfigPath()
		}
		cfg, err := client.LoadConfig(path, false)
		if err != nil {
			return &client.Config{}
		}
		return cfg
	}
	return map[string]complete.Predictor{
		"profile": complete.PredictFunc(func(complete.Args) []string {
			var out []string
			for name := range load().Profiles {
				out = append(out, name)
			}
			slices.Sort(out)
			return out
		}),
		"target": complete.PredictFunc(func(complete.Args) []string {
			var out []string
			for name, p := range load().Profiles {
				t := p.Target
				if t == "" {
					t = name
				}
				if !slices.Contains(out, t) {
					out = append(out, t)
				}
			}
			slices.Sort(out)
			return out
		}),
		// help COMMAND: the visible top-level commands of the model.
		"command": complete.PredictFunc(func(complete.Args) []string {
			var out []string
			for _, n := range app.Children {
				if !n.Hidden {
					out = append(out, n.Name)
				}
			}
			return out
		}),
		"file":      complete.PredictFiles("*"),
		"transport": complete.PredictSet(client.TransportAuto, client.TransportQUIC, client.TransportTLS, client.TransportSSH),
	}
}

// ManCmd prints the manual page, generated from the same model as --help.
type ManCmd struct{}

// Run writes roff (man(7)) to stdout: 'cachetun man > cachetun.1', or
// 'cachetun man | man -l -'.
func (m *ManCmd) Run(k *kong.Context, e *env) error {
	return writeMan(e.stdout, k.Model)
}

func writeMan(w interface{ Write([]byte) (int, error) }, app *kong.Application) error {
	var b strings.Builder
	esc := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\e`)
		s = strings.ReplaceAll(s, "-", `\-`)
		if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
			s = `\&` + s
		}
		return s
	}
	date := time.Now().UTC().Format("2006-01-02")
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" { // reproducible builds
		var sec int64
		if _, err := fmt.Sscan(epoch, &sec); err == nil {
			date = time.Unix(sec, 0).UTC().Format("2006-01-02")
		}
	}
	fmt.Fprintf(&b, ".TH CACHETUN 1 %q %q \"User Commands\"\n", date, "cachetun "+version)
	fmt.Fprintf(&b, ".SH NAME\ncachetun \\- %s\n", esc(strings.TrimSuffix(app.Help, ".")))
	b.WriteString(".SH SYNOPSIS\n.B cachetun\n.I COMMAND\n[\\fIFLAGS\\fR]\n")
	b.WriteString(".SH DESCRIPTION\n")
	b.WriteString(esc("cachetun server runs the gateway inside the VPC; cachetun connect, on a laptop, opens one encrypted session to it (QUIC, falling back to TLS over TCP, or SSH) and exposes every node of a cache target on a local port.") + "\n")
	b.WriteString(".PP\nExit status: 0 on a clean stop, 1 on a runtime failure, 2 on a usage or configuration error.\n")
	b.WriteString(".SH GLOBAL FLAGS\n")
	writeManFlags(&b, app.Node.Flags, esc)
	b.WriteString(".SH COMMANDS\n")
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, c := range n.Children {
			if c.Hidden {
				continue
			}
			if len(c.Children) == 0 {
				fmt.Fprintf(&b, ".SS \"%s\"\n", esc(strings.TrimSpace(c.Path())+manArgs(c)))
				b.WriteString(esc(c.Help) + "\n")
				if c.Detail != "" {
					b.WriteString(".PP\n" + esc(c.Detail) + "\n")
				}
				for _, p := range c.Positional {
					fmt.Fprintf(&b, ".TP\n.I %s\n%s\n", esc(strings.ToUpper(p.Name)), esc(p.Help))
				}
				writeManFlags(&b, c.Flags, esc)
			}
			walk(c)
		}
	}
	walk(app.Node)
	b.WriteString(".SH ENVIRONMENT\n")
	b.WriteString(".TP\n.B XDG_CONFIG_HOME\nThe client config is $XDG_CONFIG_HOME/cachetun/config.yaml, else ~/.config/cachetun/config.yaml (on every OS).\n")
	b.WriteString(".TP\n.B SSH_AUTH_SOCK\nssh\\-agent whose keys connect offers first, before ~/.ssh/id_ed25519, id_ecdsa and id_rsa.\n")
	b.WriteString(".SH FILES\n.TP\n.I ~/.config/cachetun/config.yaml\nClient profiles.\n.TP\n.I ~/.config/cachetun/known_hosts\nGateway host keys (OpenSSH format).\n.TP\n.I /etc/cachetun/server.yaml\nGateway configuration.\n")
	b.WriteString(".SH SEE ALSO\n.BR ssh (1),\n.BR ssh\\-agent (1),\n.BR redis\\-cli (1)\n")
	_, err := w.Write([]byte(b.String()))
	return err
}

func manArgs(n *kong.Node) string {
	var s string
	for _, p := range n.Positional {
		name := strings.ToUpper(p.Name)
		if p.IsCumulative() {
			name += "..."
		}
		if !p.Required {
			name = "[" + name + "]"
		}
		s += " " + name
	}
	return s
}

func writeManFlags(b *strings.Builder, flags []*kong.Flag, esc func(string) string) {
	for _, f := range flags {
		if f.Hidden || f.Name == "help" {
			continue
		}
		head := `\-\-` + esc(f.Name)
		if f.Short != 0 {
			head = `\-` + string(f.Short) + ", " + head
		}
		if !f.IsBool() {
			ph := f.PlaceHolder
			if ph == "" {
				ph = strings.ToUpper(f.Name)
			}
			head += "=" + `\fI` + esc(ph) + `\fR`
		}
		help := f.Help
		if len(f.Envs) > 0 {
			help += " Environment: $" + strings.Join(f.Envs, ", $") + "."
		}
		fmt.Fprintf(b, ".TP\n%s\n%s\n", head, esc(help))
	}
}

// usageHint is the hint for a command line kong could not parse: the
// help of the command the user was typing, or the list of commands.
func usageHint(err error) string {
	var pe *kong.ParseError
	if errors.As(err, &pe) && pe.Context != nil {
		if n := pe.Context.Selected(); n != nil {
			path := strings.TrimSpace(n.Path())
			for _, f := range n.Flags {
				if f.Enum != "" && strings.Contains(err.Error(), "--"+f.Name+" ") {
					vals := slices.DeleteFunc(strings.Split(f.Enum, ","), func(s string) bool { return s == "" })
					return fmt.Sprintf("--%s takes one of %s; see 'cachetun help %s'", f.Name, strings.Join(vals, ", "), path)
				}
			}
			return fmt.Sprintf("run 'cachetun help %s' for its arguments and flags", path)
		}
	}
	return "run 'cachetun help' for the list of commands"
}
