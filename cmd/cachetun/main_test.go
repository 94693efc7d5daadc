package main

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"cachetun": func() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, newSignals())) },
	})
}

// TestScripts runs testdata/*.txt: the CLI's output, errors and exit codes.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(e *testscript.Env) error {
			e.Setenv("HOME", e.WorkDir+"/home")
			e.Setenv("XDG_CONFIG_HOME", e.WorkDir+"/home/.config")
			e.Setenv("SSH_AUTH_SOCK", "")
			return nil
		},
	})
}
