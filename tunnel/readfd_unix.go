//go:build unix && !linux

package tunnel

import "syscall"

// rawCopy: the relay copies sockets through their descriptors.
const rawCopy = true

// readFD is read(2) on a non-blocking socket.
func readFD(fd uintptr, p []byte) (int, error) {
	return syscall.Read(int(fd), p)
}
