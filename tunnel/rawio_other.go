//go:build !linux

package tunnel

import "syscall"

// rawIO: elsewhere the net package's own read and write are used.
const rawIO = false

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	panic("tunnel: raw socket I/O is Linux-only")
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	panic("tunnel: raw socket I/O is Linux-only")
}
