package client

import (
	"errors"
	"net"
	"strconv"
	"syscall"
)

// listenLocal listens on exactly bind:port: "tcp4" for an IPv4 address,
// "tcp6" for an IPv6 one, so 0.0.0.0 does not also take [::] (Go's "tcp"
// with an unspecified IPv4 address listens on both families).
func listenLocal(bind string, port int) (net.Listener, error) {
	network := "tcp"
	if ip := net.ParseIP(bind); ip != nil {
		network = "tcp6"
		if ip.To4() != nil {
			network = "tcp4"
		}
	}
	return net.Listen(network, net.JoinHostPort(bind, strconv.Itoa(port)))
}

// listenHint names the fix for a local listen error.
func listenHint(bind string, err error) string {
	switch {
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return bind + " is not an address of this machine: pass --bind with one of its addresses, or leave --bind out for 127.0.0.1"
	case errors.Is(err, syscall.EACCES):
		return "ports below 1024 need privileges: pass --local-port N with N >= 1024, or 0 for free ones"
	case errors.Is(err, syscall.EADDRINUSE):
		return "another program uses that port: pass --local-port N to move the block of ports, or 0 for free ones"
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return "--bind takes a local IP address such as 127.0.0.1 or ::1"
	}
	return "check --bind and --local-port"
}
