package main

import (
	"fmt"
)

// VersionCmd prints the version.
type VersionCmd struct{}

// Run prints "cachetun VERSION (GOVERSION OS/ARCH)".
func (c *VersionCmd) Run(e *env) error {
	fmt.Fprintln(e.stdout, fullVersion())
	return nil
}
