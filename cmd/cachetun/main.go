// Command cachetun is an encrypted tunnel gateway for Redis, Valkey and
// Memcached: `cachetun server` runs inside the VPC, `cachetun connect`
// exposes every cache node on a localhost port.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, newSignals()))
}
