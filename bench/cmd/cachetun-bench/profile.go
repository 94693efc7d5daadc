package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// profile runs each workload against the cachetun paths while taking a CPU
// profile of connect and server, and writes allocation profiles taken
// before and after, for `go tool pprof -base`.
func (b *bench) profile() error {
	if err := os.MkdirAll(b.opts.profileDir, 0o755); err != nil {
		return err
	}
	for _, name := range b.opts.paths {
		if _, ok := cachetunTransport[name]; !ok {
			continue
		}
		p, err := b.setupPath(name, "")
		if err != nil {
			b.log.Printf("%s: not available: %v", name, err)
			continue
		}
		for _, w := range workloads {
			if b.opts.workloads != nil && !b.opts.workloads[w.name] {
				continue
			}
			if err := b.profileOne(p, w); err != nil {
				b.log.Printf("profile %s %s: %v", name, w.name, err)
			}
		}
		p.stop()
	}
	return nil
}

func (b *bench) profileOne(p *benchPath, w workload) error {
	tr := cachetunTransport[p.name]
	base := filepath.Join(b.opts.profileDir, tr+"-"+w.name)
	secs := b.opts.profileSec
	// A CPU profile answers only after secs: httpClient's 10 s timeout
	// cut every profile of the default 10 s.
	long := &http.Client{Timeout: time.Duration(secs)*time.Second + 30*time.Second}
	get := func(addr, what, file string) error {
		body, err := httpGetWith(long, "http://"+addr+"/debug/pprof/"+what)
		if err != nil {
			return err
		}
		return os.WriteFile(file, body, 0o644)
	}
	for side, addr := range map[string]string{"client": p.clientPprof, "server": p.serverPprof} {
		if err := get(addr, "allocs", base+"-"+side+"-allocs-before.pprof"); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for side, addr := range map[string]string{"client": p.clientPprof, "server": p.serverPprof} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := get(addr, fmt.Sprintf("profile?seconds=%d", secs), base+"-"+side+"-cpu.pprof"); err != nil {
				errs <- err
			}
		}()
	}
	// Keep the load on for the whole profile, bounded in count too.
	end := time.Now().Add(time.Duration(secs) * time.Second)
	runs := 0
	for time.Now().Before(end) && runs < 50 && b.ctx.Err() == nil {
		out, err := b.runWorkload(w, p)
		if err != nil {
			return err
		}
		var parts []string
		for k, v := range out {
			parts = append(parts, fmt.Sprintf("%s=%.1f", k, v))
		}
		b.log.Printf("profile %s %s: %s", p.name, w.name, strings.Join(parts, " "))
		runs++
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	for side, addr := range map[string]string{"client": p.clientPprof, "server": p.serverPprof} {
		if err := get(addr, "allocs", base+"-"+side+"-allocs-after.pprof"); err != nil {
			return err
		}
	}
	b.log.Printf("wrote %s-*.pprof", base)
	return nil
}
