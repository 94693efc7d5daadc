// Command cachetun-bench compares cachetun with what people run today to
// reach a cache: a direct connection, a socat relay, nutcracker
// (twemproxy) and OpenSSH's ssh -L through a private sshd, against one
// redis-server on loopback, with redis-benchmark. Rounds are interleaved
// (A B C ... A B C ...) to cancel drift; the table holds medians and every
// figure as a ratio to ssh -L and to direct. A second phase holds 10,000
// idle connections through each path and measures RSS per connection and
// goroutine leaks.
//
// make bench runs
//
//	go run ./bench/cmd/cachetun-bench -bin bin/cachetun -out BENCHMARKS.md
//
// It rewrites the part of BENCHMARKS.md between the bench markers and
// leaves the rest of the file alone. Every process it starts lives in a
// temporary directory and is stopped on exit, SIGINT or SIGTERM; all
// traffic stays on 127.0.0.1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cachetun/cachetun/bench/internal/redisbench"
	"github.com/cachetun/cachetun/bench/internal/sshdenv"
)

type options struct {
	bin        string
	baseBin    string   // -base-bin: a second cachetun binary, run side by side
	baseLimits []string // -base-limits: "key: value" lines under the base gateways' limits
	out        string
	rounds     int
	paths      []string
	scale      float64
	idleConns  int
	idle       bool
	throughput bool
	profileDir string
	profileSec int
	heapDir    string
	keep       bool
	timeout    time.Duration
	workloads  map[string]bool // -workloads: only these run (nil: all)
}

type bench struct {
	opts options
	ctx  context.Context
	dir  string
	bin  string
	// baseBin is -base-bin made absolute; empty without it.
	baseBin string
	tools   map[string]string
	log     *log.Logger

	mu      sync.Mutex // guards the following
	procs   []*proc
	cmds    []string // setup commands in order, deduplicated
	wcmds   map[string]string
	configs []namedConfig // config files of the first instance of each path

	redis     *proc
	redisAddr string
	sshd      *sshdenv.Env // the private sshd's keys, once made
	ctDir     string
	facts     facts

	// results[metric][path] = one value per round
	results map[string]map[string][]float64
	errs    map[string]string // path -> first failure
	idle    map[string]*idleResult
	idleErr map[string]string
	skipped map[string]string // path -> why it is not in the table
	started time.Time
}

func main() {
	log.SetFlags(0)
	os.Exit(run())
}

func run() int {
	var o options
	var paths string
	flag.StringVar(&o.bin, "bin", "", "cachetun binary (default: go build ./cmd/cachetun into the temp dir)")
	flag.StringVar(&o.baseBin, "base-bin", "", "a second cachetun binary (say, main before a change): each cachetun path also runs with it, interleaved in the same rounds, as \"cachetun T"+baseSuffix+"\"")
	var baseLimits string
	flag.StringVar(&baseLimits, "base-limits", "", "comma-separated \"key: value\" settings added under limits: of the \""+baseSuffix[1:]+"\" gateways (say \"resume_grace: 0s\" to measure what stream resumption costs); without -base-bin the base paths run the same binary")
	flag.StringVar(&o.out, "out", "BENCHMARKS.md", "markdown file whose bench section is rewritten (empty: print only)")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds (medians need 3 or more)")
	flag.StringVar(&paths, "paths", strings.Join(allPaths, ","), "comma-separated paths to compare")
	flag.Float64Var(&o.scale, "scale", 1, "scale the request counts (0.1 for a smoke run)")
	flag.IntVar(&o.idleConns, "idle-conns", 10000, "concurrent idle connections per path (0 skips the idle phase)")
	flag.BoolVar(&o.throughput, "throughput", true, "run the redis-benchmark rounds")
	flag.StringVar(&o.profileDir, "profile", "", "instead of the benchmark, write CPU and allocation profiles of cachetun under load into this directory")
	flag.IntVar(&o.profileSec, "profile-seconds", 10, "length of each CPU profile")
	flag.StringVar(&o.heapDir, "idle-profile", "", "write heap and goroutine profiles of cachetun during the idle test into this directory")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (logs, configs)")
	flag.DurationVar(&o.timeout, "timeout", 0, "abort the whole run after this long (default 20m, times -scale when that is above 1)")
	var wls string
	flag.StringVar(&wls, "workloads", "", "comma-separated workloads to run (setget,p16,c1,churn,bulk_up,bulk_down; empty: all); bulk_down brings bulk_up, which writes the value it reads")
	flag.Parse()
	var err error
	if o.baseLimits, err = parseBaseLimits(baseLimits); err != nil {
		log.Printf("cachetun-bench: error: %v", err)
		return 2
	}
	if o.timeout <= 0 {
		// A run at -scale 3 with -base-bin needs about 25 minutes: the bound
		// grows with the request counts.
		o.timeout = time.Duration(float64(20*time.Minute) * max(1, o.scale))
	}
	for _, w := range strings.Split(wls, ",") {
		if w = strings.TrimSpace(w); w == "" {
			continue
		}
		found := false
		for _, x := range workloads {
			found = found || x.name == w
		}
		if !found {
			log.Printf("cachetun-bench: error: unknown workload %q", w)
			return 2
		}
		if o.workloads == nil {
			o.workloads = map[string]bool{}
		}
		o.workloads[w] = true
	}
	if o.workloads["bulk_down"] {
		o.workloads["bulk_up"] = true
	}
	o.idle = o.idleConns > 0
	for _, p := range strings.Split(paths, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if p == "ssh-L" || p == "sshL" {
			p = pathSSHL
		}
		if strings.HasPrefix(p, "cachetun-") {
			p = "cachetun " + strings.TrimPrefix(p, "cachetun-")
		}
		known := false
		for _, a := range allPaths {
			known = known || a == p
		}
		if !known {
			log.Printf("cachetun-bench: error: unknown path %q (known: %s)", p, strings.Join(allPaths, ", "))
			return 2
		}
		o.paths = append(o.paths, p)
	}
	if o.baseBin != "" || len(o.baseLimits) > 0 {
		o.paths = addBasePaths(o.paths)
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case s := <-sig:
			log.Printf("cachetun-bench: %s: stopping", s)
			cancel()
		case <-ctx.Done():
		}
	}()

	b := &bench{opts: o, ctx: ctx, log: log.New(os.Stderr, "", log.Ltime), wcmds: map[string]string{},
		results: map[string]map[string][]float64{}, errs: map[string]string{}, idle: map[string]*idleResult{},
		idleErr: map[string]string{}, skipped: map[string]string{}, started: time.Now()}
	err = b.main()
	b.cleanup()
	if err != nil {
		log.Printf("cachetun-bench: error: %v", err)
		return 1
	}
	return 0
}

func (b *bench) main() error {
	dir, err := os.MkdirTemp("", "cachetun-bench-")
	if err != nil {
		return err
	}
	b.dir = dir
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return err
	}
	if err := raiseNofile(); err != nil {
		b.log.Printf("warning: %v", err)
	}
	if err := b.findTools(); err != nil {
		return err
	}
	if err := b.buildCachetun(); err != nil {
		return err
	}
	b.gatherFacts()
	if err := os.WriteFile(filepath.Join(dir, "value-1MiB"), []byte(strings.Repeat("x", bulkValue)), 0o644); err != nil {
		return err
	}
	if err := b.startRedis(); err != nil {
		return err
	}
	b.log.Printf("redis-server on %s; temp dir %s", b.redisAddr, b.dir)

	if b.opts.profileDir != "" {
		return b.profile()
	}
	if b.opts.throughput {
		if err := b.throughputPhase(); err != nil {
			return err
		}
	}
	if b.opts.idle {
		b.idlePhase()
	}
	if b.ctx.Err() != nil {
		return fmt.Errorf("run aborted: %w", context.Cause(b.ctx))
	}
	report := b.report()
	fmt.Print(report)
	if b.opts.out != "" {
		if err := writeSection(b.opts.out, report); err != nil {
			return err
		}
		b.log.Printf("wrote %s", b.opts.out)
	}
	b.log.Printf("done in %s", time.Since(b.started).Round(time.Second))
	return nil
}

// throughputPhase sets every path up once and runs the workloads in
// interleaved rounds: for each workload, every path in turn, the order
// rotated by one each round.
func (b *bench) throughputPhase() error {
	var paths []*benchPath
	for _, name := range b.opts.paths {
		p, err := b.setupPath(name, "")
		if err != nil {
			if b.ctx.Err() != nil {
				return b.ctx.Err()
			}
			b.log.Printf("%s: not available: %v", name, err)
			b.skipped[name] = err.Error()
			continue
		}
		b.log.Printf("%s: ready on %s", name, p.addr)
		paths = append(paths, p)
	}
	defer func() {
		for _, p := range paths {
			p.stop()
		}
	}()
	if len(paths) == 0 {
		return errors.New("no path could be set up")
	}
	// Warm-up: sessions, connection pools and page cache.
	for _, p := range paths {
		if _, err := b.runWorkload(workload{name: "warmup", args: func(float64) []string {
			return []string{"-t", "set,get", "-c", "10", "-n", "2000"}
		}, parse: func(redisbench.Results, map[string]float64) error { return nil }}, p); err != nil {
			b.log.Printf("%s: warm-up failed: %v", p.name, err)
		}
	}
	for r := 0; r < b.opts.rounds; r++ {
		for _, w := range workloads {
			if b.opts.workloads != nil && !b.opts.workloads[w.name] {
				continue
			}
			for i := range paths {
				p := paths[(i+r)%len(paths)]
				if b.ctx.Err() != nil {
					return b.ctx.Err()
				}
				t0 := time.Now()
				out, err := b.runWorkload(w, p)
				if err != nil {
					b.log.Printf("round %d %s %s: %v", r+1, w.name, p.name, err)
					if _, ok := b.errs[p.name]; !ok {
						b.errs[p.name] = fmt.Sprintf("%s: %v", w.name, err)
					}
					continue
				}
				var parts []string
				for k, v := range out {
					b.add(k, p.name, r, v)
					prec := 1
					if strings.HasPrefix(k, "cpu_") { // 2.3 µs per request at -P 16, where one decimal is 4 %
						prec = 3
					}
					parts = append(parts, fmt.Sprintf("%s=%.*f", k, prec, v))
				}
				sort.Strings(parts)
				b.log.Printf("round %d %-9s %-13s %s (%.1fs)", r+1, w.name, p.name, strings.Join(parts, " "), time.Since(t0).Seconds())
			}
		}
	}
	return nil
}

// add records the value of round r; rounds without a value stay NaN.
func (b *bench) add(metric, path string, r int, v float64) {
	m := b.results[metric]
	if m == nil {
		m = map[string][]float64{}
		b.results[metric] = m
	}
	s := m[path]
	for len(s) < b.opts.rounds {
		s = append(s, math.NaN())
	}
	s[r] = v
	m[path] = s
}

// idlePaths are the paths of the idle test; socat forks a process per
// connection, so 10,000 connections would be 10,000 processes.
func (b *bench) idlePaths() []string {
	var out []string
	for _, p := range b.opts.paths {
		if p == pathSocat {
			continue
		}
		out = append(out, p)
	}
	return out
}

// idlePhase runs the idle-connection test on a fresh instance of each
// path, so that memory freed by earlier workloads cannot hide growth.
func (b *bench) idlePhase() {
	for _, name := range b.idlePaths() {
		if b.ctx.Err() != nil {
			return
		}
		p, err := b.setupPath(name, "-idle")
		if err != nil {
			b.log.Printf("idle %s: not available: %v", name, err)
			b.idleErr[name] = err.Error()
			continue
		}
		res, err := b.runIdle(p, b.opts.idleConns)
		p.stop()
		if err != nil {
			b.idleErr[name] = err.Error()
			continue
		}
		b.idle[name] = res
		b.log.Printf("idle %-13s %d conns in %.1fs: client %.1f KiB/conn, server %.1f KiB/conn, goroutines %v -> %v -> %v, leak: %s %s",
			name, res.conns, res.openSecs, res.clientKiB, res.serverKiB, res.gorBefore, res.gorDuring, res.gorAfter, res.leak, res.note)
		if res.memBefore[0].heapInuse >= 0 && res.conns > 0 {
			per := func(a, b int64) float64 { return float64(b-a) / float64(res.conns) }
			b.log.Printf("idle %-13s Go heap/stack KiB per conn: client %.1f/%.1f, server %.1f/%.1f", name,
				per(res.memBefore[0].heapInuse, res.memDuring[0].heapInuse), per(res.memBefore[0].stackInuse, res.memDuring[0].stackInuse),
				per(res.memBefore[1].heapInuse, res.memDuring[1].heapInuse), per(res.memBefore[1].stackInuse, res.memDuring[1].stackInuse))
		}
	}
}

func (b *bench) track(p *proc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.procs = append(b.procs, p)
}

// record notes a setup command for the report, with the temp dir and
// binary paths shortened.
func (b *bench) record(kind string, argv []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.shorten(argv)
	for _, c := range b.cmds {
		if c == s {
			return
		}
	}
	b.cmds = append(b.cmds, s)
}

type namedConfig struct{ name, text string }

// recordConfig keeps a config file for the report (first instances only:
// the idle test's are the same but for ports).
func (b *bench) recordConfig(name, tag, text string) {
	if tag != "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.configs {
		if c.name == name {
			return
		}
	}
	b.configs = append(b.configs, namedConfig{name, strings.ReplaceAll(text, b.dir, "$D")})
}

func (b *bench) recordWorkload(name string, argv []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.wcmds[name]; !ok && name != "warmup" {
		b.wcmds[name] = b.shorten(argv)
	}
}

func (b *bench) shorten(argv []string) string {
	var parts []string
	for _, a := range argv {
		a = strings.ReplaceAll(a, b.dir, "$D")
		if a == b.bin {
			a = "cachetun"
		}
		if a == b.baseBin && a != "" {
			a = "cachetun" + baseSuffix
		}
		for name, path := range b.tools {
			if a == path {
				a = name
			}
		}
		if a == "" || strings.ContainsAny(a, " \"'$*") && !strings.HasPrefix(a, "$D") {
			a = "'" + a + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// cleanup stops every process still running, newest first, and removes
// the temp dir.
func (b *bench) cleanup() {
	b.mu.Lock()
	procs := append([]*proc(nil), b.procs...)
	b.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(3 * time.Second)
	}
	b.sshd.Close()
	if b.dir != "" {
		if b.opts.keep {
			b.log.Printf("kept %s", b.dir)
		} else {
			_ = os.RemoveAll(b.dir)
		}
	}
}

// raiseNofile lifts the soft open-files limit to the hard one; children
// (redis, sshd, cachetun) inherit it. 10,000 connections need it.
func raiseNofile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	}
	if l.Cur < 11000 {
		return fmt.Errorf("RLIMIT_NOFILE is %d: the 10,000-connection test needs about 10,100 per process", l.Cur)
	}
	return nil
}

// findTools looks up every external program.
func (b *bench) findTools() error {
	b.tools = map[string]string{}
	var missing []string
	for _, t := range []string{"redis-server", "redis-benchmark", "socat", "nutcracker", "sshd", "ssh", "ssh-keygen"} {
		p, err := exec.LookPath(t)
		if err != nil && t == "sshd" {
			p, err = "/usr/sbin/sshd", nil
			if _, serr := os.Stat(p); serr != nil {
				err = serr
			}
		}
		if err != nil {
			missing = append(missing, t)
			continue
		}
		if !filepath.IsAbs(p) {
			if abs, err := filepath.Abs(p); err == nil {
				p = abs
			}
		}
		b.tools[t] = p
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing programs: %s (Debian: apt-get install redis-server redis-tools socat nutcracker openssh-server openssh-client)", strings.Join(missing, ", "))
	}
	return nil
}

// baseLimitRE is one -base-limits setting: one YAML line, nothing else.
var baseLimitRE = regexp.MustCompile(`^[a-z_]+: *[^\s,:#][^,:#\n]*$`)

// parseBaseLimits splits -base-limits into its "key: value" settings.
func parseBaseLimits(s string) ([]string, error) {
	var out []string
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		if !baseLimitRE.MatchString(kv) {
			return nil, fmt.Errorf("-base-limits %q: each setting is \"key: value\", a key of the gateway's limits: (say \"resume_grace: 0s\"), settings separated by commas", kv)
		}
		out = append(out, kv)
	}
	return out, nil
}

// buildCachetun uses -bin or builds ./cmd/cachetun; -base-bin must exist.
// Without it, -base-limits runs the base paths with the same binary.
func (b *bench) buildCachetun() error {
	if err := b.buildMain(); err != nil {
		return err
	}
	if b.baseBin == "" && len(b.opts.baseLimits) > 0 {
		b.baseBin = b.bin
	}
	return nil
}

func (b *bench) buildMain() error {
	if b.opts.baseBin != "" {
		p, err := filepath.Abs(b.opts.baseBin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("base cachetun binary (-base-bin): %w", err)
		}
		b.baseBin = p
	}
	if b.opts.bin != "" {
		p, err := filepath.Abs(b.opts.bin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("cachetun binary: %w", err)
		}
		b.bin = p
		return nil
	}
	b.bin = filepath.Join(b.dir, "cachetun")
	cmd := exec.CommandContext(b.ctx, "go", "build", "-trimpath", "-o", b.bin, "./cmd/cachetun")
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	b.log.Printf("building cachetun")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/cachetun: %w", err)
	}
	return nil
}
