//go:build !linux

package tunnel

import "net"

// newFastConn: elsewhere the net package's own read and write are used
// (raw socket I/O is Linux-only, see rawio_linux.go).
func newFastConn(c net.Conn) net.Conn { return c }
