package tunnel

import (
	"syscall"
	"unsafe"
)

// rawIO: read(2) and write(2) as raw syscalls (see rawio.go).
const rawIO = true

func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

// readFD is read(2) on a non-blocking socket, as a raw syscall.
func readFD(fd uintptr, p []byte) (int, error) {
	n, errno := sysRead(fd, p)
	if errno != 0 {
		return -1, errno
	}
	return n, nil
}

// rawCopy: the relay copies sockets through their descriptors.
const rawCopy = true
