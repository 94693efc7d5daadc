package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/cachetun/cachetun/control"
)

// startPprof serves the runtime profiles (net/http/pprof) on addr for
// benchmarks and profiling; the flag is hidden because it is a developer
// tool. Profiles expose memory contents, so only loopback addresses are
// accepted. The returned function stops the server.
func startPprof(addr string) (func(), error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("--pprof %q: %w", addr, err), Hint: "pass a loopback address such as 127.0.0.1:6060"}
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, &control.Error{Usage: true, Fix: control.FixUser, Err: fmt.Errorf("--pprof %q is not a loopback address", addr), Hint: "profiles expose memory contents: bind 127.0.0.1"}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen pprof on %q: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = hs.Serve(ln)
	}()
	return func() {
		_ = hs.Close()
		<-done
	}, nil
}
