//go:build !unix

package testenv

import (
	"os/exec"
	"syscall"
)

var (
	sigTerm = syscall.SIGTERM
	sigKill = syscall.SIGKILL
)

func sysProcAttr() *syscall.SysProcAttr { return nil }

// signalProc kills the process; signals other than SIGKILL do not exist here.
func signalProc(cmd *exec.Cmd, _ syscall.Signal) { cmd.Process.Kill() }
