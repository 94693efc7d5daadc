package main

import (
	"fmt"
	"runtime"
)

// VersionCmd prints the version.
type VersionCmd struct{}

// Run prints "cachetun VERSION (GOVERSION OS/ARCH)".
func (c *VersionCmd) Run(e *env) error {
	fmt.Fprintf(e.stdout, "cachetun %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
