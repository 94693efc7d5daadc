package main

import (
	"fmt"
	"time"

	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/server"
)

// ServerCheckCmd validates the gateway's files as `sshd -t` does.
type ServerCheckCmd struct {
	Config string `help:"Server config file (default: ${default})." default:"/etc/cachetun/server.yaml" env:"CACHETUN_SERVER_CONFIG" placeholder:"PATH" predictor:"file"`
}

// Run prints one line per problem, "file:line: error|warning: message",
// then a summary; it fails (exit code 2) when any problem is an error.
// systemd runs it before the gateway starts and before a reload.
func (c *ServerCheckCmd) Run(e *env) error {
	ps := server.Check(c.Config, time.Now())
	errs, warns := 0, 0
	for _, p := range ps {
		fmt.Fprintln(e.stdout, p.String())
		if p.Severity == server.SeverityError {
			errs++
		} else {
			warns++
		}
	}
	if errs > 0 {
		return &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("check %s: %s, %s", c.Config, plural(errs, "error"), plural(warns, "warning")),
			Hint: "fix the lines above, then run 'cachetun server check' again"}
	}
	fmt.Fprintf(e.stdout, "%s: ok, %s\n", c.Config, plural(warns, "warning"))
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
