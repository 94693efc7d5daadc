package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/alecthomas/kong"
	"github.com/willabides/kongplete"

	"github.com/cachetun/cachetun/control"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

// CLI is the command line; every command has a Run method in its own file.
type CLI struct {
	LogLevel  string `help:"Log level: debug, info, warn, error." enum:"debug,info,warn,error" default:"info" env:"CACHETUN_LOG_LEVEL"`
	LogFormat string `help:"Log format: text or json (default: log_format: in server.yaml, else text)." env:"CACHETUN_LOG_FORMAT" placeholder:"text|json"`
	Pprof     string `hidden:"" help:"Serve net/http/pprof on this loopback address (profiling, benchmarks)." placeholder:"ADDR"`
	// VersionFlag is --version; the command of the same name is below.
	VersionFlag kong.VersionFlag `name:"version" help:"Print the version and exit."`

	Server     ServerCmd     `cmd:"" help:"Run the gateway (server run; default config /etc/cachetun/server.yaml), or set one up (server init)."`
	Connect    ConnectCmd    `cmd:"" help:"Open local ports for one or more profiles' targets (or --all)."`
	Exec       ExecCmd       `cmd:"" help:"Bring the ports up, run CMD with them in its environment, exit with its status: exec PROFILE... -- CMD ARGS."`
	Ls         LsCmd         `cmd:"" help:"List the targets this key may use, with type and node count."`
	Doctor     DoctorCmd     `cmd:"" help:"Check config, keys, agent, known_hosts, DNS, each transport, authentication, the target and each node."`
	Keygen     KeygenCmd     `cmd:"" help:"Create a new ed25519 key (OpenSSH format)."`
	Version    VersionCmd    `cmd:"" help:"Print the version."`
	Help       HelpCmd       `cmd:"" help:"Show the help of cachetun or of one command."`
	Completion CompletionCmd `cmd:"" help:"Print a shell completion script: source <(cachetun completion bash)."`
	Man        ManCmd        `cmd:"" help:"Print the manual page (roff): cachetun man | man -l -."`
}

// env is what every command's Run receives.
type env struct {
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
	log     *slog.Logger
	signals signals
	// logLevel and logFormat are what --log-level and --log-format (or
	// their environment variables) said; logFormat is empty when neither
	// named a format, so that a config file may.
	logLevel, logFormat string
}

// signals delivers SIGINT/SIGTERM and SIGHUP; tests inject their own.
type signals struct {
	stop   <-chan os.Signal
	reload <-chan os.Signal
}

func newSignals() signals {
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	return signals{stop: stop, reload: reload}
}

// hangupStops returns signals whose stop channel also delivers the
// reload signal (SIGHUP), and no reload channel; quit ends the forwarding.
func (s signals) hangupStops() (signals, func()) {
	stop := make(chan os.Signal, 2)
	done := make(chan struct{})
	go func() {
		for {
			var v os.Signal
			select {
			case v = <-s.stop:
			case v = <-s.reload:
			case <-done:
				return
			}
			select {
			case stop <- v:
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return signals{stop: stop}, func() { once.Do(func() { close(done) }) }
}

// run parses args and runs the command. Every error reaches the user as
//
//	cachetun: error: what went wrong
//	cachetun: hint: the fix
//
// lowercase, without a final period; the exit code is 0 on a clean stop, 1
// for a runtime failure and 2 for a usage or configuration error.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, sig signals) int {
	var cli CLI
	exitCode := -1
	parser, err := kong.New(&cli,
		kong.Name("cachetun"),
		kong.Description("Encrypted tunnels to Redis, Valkey and Memcached nodes inside a VPC."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exitCode = code }),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Vars{"version": fullVersion()},
	)
	if err != nil {
		fmt.Fprintf(stderr, "cachetun: error: %v\n", err)
		return exitRuntime
	}
	// With COMP_LINE set (the completion scripts of 'cachetun
	// completion'), print the candidates and stop.
	kongplete.Complete(parser, kongplete.WithPredictors(completionPredictors(parser.Model)),
		kongplete.WithExitFunc(func(code int) { exitCode = code }))
	if exitCode >= 0 {
		return exitCode
	}
	args, command := splitExec(args)
	kctx, err := parser.Parse(args)
	if exitCode >= 0 { // --help, --version
		return exitCode
	}
	if err != nil {
		printError(stderr, &control.Error{Usage: true, Fix: control.FixUser, Err: err, Hint: usageHint(err)})
		return exitUsage
	}
	switch cli.LogFormat {
	case "", "text", "json":
	default:
		printError(stderr, &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("--log-format (or CACHETUN_LOG_FORMAT) %q is not one of text, json", cli.LogFormat), Hint: "use --log-format text or --log-format json"})
		return exitUsage
	}
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr, log: newLogger(stderr, cli.LogLevel, cli.LogFormat), signals: sig,
		logLevel: cli.LogLevel, logFormat: cli.LogFormat}
	if cli.Pprof != "" {
		stop, err := startPprof(cli.Pprof)
		if err != nil {
			printError(stderr, err)
			return exitUsage
		}
		defer stop()
	}
	if !strings.HasPrefix(kctx.Command(), "server") {
		// Only the gateway reloads on SIGHUP. For a client command it means
		// the terminal went away (a closed window, a killed tmux or
		// script): stop as on SIGTERM, as ssh does, instead of holding the
		// local ports with no one to press Ctrl-C.
		var quit func()
		e.signals, quit = sig.hangupStops()
		defer quit()
	}
	cli.Exec.Command = command
	err = kctx.Run(e)
	if err == nil {
		return exitOK
	}
	var xs *exitStatus
	if errors.As(err, &xs) {
		return xs.code // the command's own status, and nothing to add
	}
	printError(stderr, err)
	if control.IsUsage(err) {
		return exitUsage
	}
	return exitRuntime
}

// printError prints any error the same way: its message, then its hint
// (control.HintOf), if it has one.
func printError(w io.Writer, err error) {
	fmt.Fprintf(w, "cachetun: error: %s\n", strings.TrimSuffix(err.Error(), "."))
	if h := control.HintOf(err); h != "" {
		fmt.Fprintf(w, "cachetun: hint: %s\n", strings.TrimSuffix(h, "."))
	}
}

// newLogger returns the logger of every command. Text lines write a
// duration as Go does ("1.5s"); JSON lines, for a log pipeline, write it as
// a number of milliseconds with the unit in the key ("duration" becomes
// "duration_ms": 1500), so that a query can compare and sum it.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		opts.ReplaceAttr = jsonDurations
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// jsonDurations rewrites a time.Duration attribute d as d_ms, a number of
// milliseconds (microsecond precision).
func jsonDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindDuration {
		return a
	}
	d := a.Value.Duration()
	return slog.Float64(a.Key+"_ms", float64(d.Microseconds())/1000)
}

// stopContext returns a context cancelled at the first stop signal and a
// second one cancelled at the second: the first drains, the second aborts.
func stopContext(sig signals) (drain, abort context.Context, cancel func()) {
	drain, cancelDrain := context.WithCancel(context.Background())
	abort, cancelAbort := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		select {
		case <-sig.stop:
			cancelDrain()
		case <-done:
			return
		}
		select {
		case <-sig.stop:
			cancelAbort()
		case <-done:
		}
	}()
	var once sync.Once
	return drain, abort, func() {
		once.Do(func() {
			close(done)
			cancelDrain()
			cancelAbort()
		})
	}
}

// splitExec cuts "exec ... -- CMD ARGS" at the first "--": kong would
// take CMD and its arguments for more profiles.
func splitExec(args []string) (rest, command []string) {
	isExec := false
	for i, a := range args {
		if a == "exec" && !isExec {
			isExec = true
			continue
		}
		if a == "--" && isExec {
			return args[:i], args[i+1:]
		}
	}
	return args, nil
}
