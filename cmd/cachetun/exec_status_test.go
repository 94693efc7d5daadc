package main

import (
	"errors"
	"os/exec"
	"testing"
)

// TestCommandStatus: exec exits as a shell would report its command: the
// exit code, or 128+N for a command killed by signal N (it used to say
// 143 for every signal).
func TestCommandStatus(t *testing.T) {
	for script, want := range map[string]int{
		"exit 7":        7,
		"kill -INT $$":  130,
		"kill -HUP $$":  129,
		"kill -TERM $$": 143,
		"kill -KILL $$": 137,
	} {
		err := exec.Command("sh", "-c", script).Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("sh -c %q: %v, want an exit error", script, err)
		}
		if got := commandStatus(ee); got != want {
			t.Errorf("sh -c %q: status %d, want %d", script, got, want)
		}
	}
}
