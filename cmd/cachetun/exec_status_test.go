package main

import (
	"errors"
	"fmt"
	"os/exec"
	"testing"
)

// TestCommandStatus: exec exits as a shell would report its command: the
// exit code, or 128+N for a command killed by signal N (it used to say
// 143 for every signal).
//
// The signals come from perl (Essential on Debian), which first sets the
// signal back to its default action: a signal ignored when the test
// started stays ignored in every child (`nohup make test` ignores SIGHUP,
// a shell's background job SIGINT), and a shell may not undo that, so
// `sh -c 'kill -HUP $$'` would just exit 0.
func TestCommandStatus(t *testing.T) {
	if _, err := exec.LookPath("perl"); err != nil {
		t.Fatalf("perl not found (Debian: perl-base, Essential): %v", err)
	}
	killedBy := func(sig string) []string {
		reset := fmt.Sprintf("$SIG{%s} = 'DEFAULT'; ", sig)
		if sig == "KILL" { // cannot be ignored, nor given an action
			reset = ""
		}
		return []string{"perl", "-e", reset + fmt.Sprintf("kill '%s', $$; sleep 10; exit 3", sig)}
	}
	for _, c := range []struct {
		argv []string
		want int
	}{
		{[]string{"sh", "-c", "exit 7"}, 7},
		{killedBy("INT"), 130},
		{killedBy("HUP"), 129},
		{killedBy("TERM"), 143},
		{killedBy("KILL"), 137},
	} {
		err := exec.Command(c.argv[0], c.argv[1:]...).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%q: %v, want an exit error", c.argv, err)
		}
		if got := commandStatus(ee); got != c.want {
			t.Errorf("%q: status %d, want %d", c.argv, got, c.want)
		}
	}
}
