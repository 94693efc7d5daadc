package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachetun/cachetun/bench/internal/redisbench"
)

// metric is one figure of the results table.
type metric struct {
	key   string
	label string
	unit  string
	// higher is better for rates, lower for latencies
	higherBetter bool
}

var metrics = []metric{
	{"set_c50", "SET ops/s, -c 50 -P 1", "ops/s", true},
	{"get_c50", "GET ops/s, -c 50 -P 1", "ops/s", true},
	{"get_p16", "GET ops/s, -c 50 -P 16", "ops/s", true},
	{"p50_c1", "GET p50 latency, -c 1", "µs", false},
	{"p99_c1", "GET p99 latency, -c 1", "µs", false},
	{"churn", "GET ops/s, -c 50 -k 0 (new connection per request)", "ops/s", true},
	{"bulk_up", "bulk SET of 1 MiB values (1 GiB), client to cache", "MiB/s", true},
	{"bulk_down", "bulk GET of 1 MiB values (1 GiB), cache to client", "MiB/s", true},
}

// cpuMetrics are the CPU time the path's own processes (client and server
// side, not redis, not redis-benchmark) spent per request or per GiB:
// unlike rates, they hardly depend on how busy the machine is.
var cpuMetrics = []metric{
	{"cpu_setget", "SET/GET, -c 50 -P 1", "µs/req", false},
	{"cpu_p16", "GET, -c 50 -P 16", "µs/req", false},
	{"cpu_c1", "GET, -c 1", "µs/req", false},
	{"cpu_churn", "GET, -c 50 -k 0", "µs/req", false},
	{"cpu_bulk_up", "bulk SET, client to cache", "ms/GiB", false},
	{"cpu_bulk_down", "bulk GET, cache to client", "ms/GiB", false},
}

// workload is one redis-benchmark invocation and the metrics it yields.
type workload struct {
	name  string
	args  func(s float64) []string
	stdin string // file name under the bench dir fed to -x
	parse func(rows redisbench.Results, out map[string]float64) error
	// cpu names the CPU metric; perN turns the -n of the run into its
	// unit (requests, or GiB for bulk; CPU per GiB is in ms).
	cpu  string
	perN float64
}

func scaled(n int, s float64, min int) string {
	v := int(float64(n) * s)
	if v < min {
		v = min
	}
	return strconv.Itoa(v)
}

// bulkValue is the size of one bulk value; bulkCount of them make 1 GiB.
const (
	bulkValue = 1 << 20
	bulkCount = 1024
)

var workloads = []workload{
	{
		name: "setget",
		cpu:  "cpu_setget", perN: 2,
		args: func(s float64) []string {
			return []string{"-t", "set,get", "-c", "50", "-P", "1", "-n", scaled(15000, s, 500)}
		},
		parse: func(rows redisbench.Results, out map[string]float64) error {
			var err error
			if out["set_c50"], err = rows.Value("SET", "rps"); err != nil {
				return err
			}
			out["get_c50"], err = rows.Value("GET", "rps")
			return err
		},
	},
	{
		name: "p16",
		cpu:  "cpu_p16", perN: 1,
		args: func(s float64) []string {
			return []string{"-t", "get", "-c", "50", "-P", "16", "-n", scaled(300000, s, 5000)}
		},
		parse: func(rows redisbench.Results, out map[string]float64) error {
			var err error
			out["get_p16"], err = rows.Value("GET", "rps")
			return err
		},
	},
	{
		name: "c1",
		cpu:  "cpu_c1", perN: 1,
		args: func(s float64) []string {
			return []string{"-t", "get", "-c", "1", "-P", "1", "-n", scaled(10000, s, 500)}
		},
		parse: func(rows redisbench.Results, out map[string]float64) error {
			p50, err := rows.Value("GET", "p50_latency_ms")
			if err != nil {
				return err
			}
			p99, err := rows.Value("GET", "p99_latency_ms")
			if err != nil {
				return err
			}
			out["p50_c1"], out["p99_c1"] = p50*1000, p99*1000
			return nil
		},
	},
	{
		name: "churn",
		cpu:  "cpu_churn", perN: 1,
		args: func(s float64) []string {
			return []string{"-t", "get", "-c", "50", "-k", "0", "-n", scaled(3000, s, 300)}
		},
		parse: func(rows redisbench.Results, out map[string]float64) error {
			var err error
			out["churn"], err = rows.Value("GET", "rps")
			return err
		},
	},
	{
		name:  "bulk_up",
		stdin: "value-1MiB",
		cpu:   "cpu_bulk_up", perN: float64(bulkValue) / (1 << 30),
		args: func(s float64) []string {
			return []string{"-c", "4", "-P", "1", "-n", scaled(bulkCount, s, 64), "-x", "set", "bench:bulk"}
		},
		parse: func(rows redisbench.Results, out map[string]float64) error {
			rps, err := rows.Value("set bench:bulk", "rps")
			out["bulk_up"] = rps * bulkValue / (1 << 20)
			return err
		},
	},
	{
		name: "bulk_down",
		cpu:  "cpu_bulk_down", perN: float64(bulkValue) / (1 << 30),
		args: func(s float64) []string {
			return []string{"-c", "4", "-P", "1", "-n", scaled(bulkCount, s, 64), "get", "bench:bulk"}
		},
		parse: func(rows redisbench.Results, out map[string]float64) error {
			rps, err := rows.Value("get bench:bulk", "rps")
			out["bulk_down"] = rps * bulkValue / (1 << 20)
			return err
		},
	},
}

// runWorkload runs one redis-benchmark through p.
func (b *bench) runWorkload(w workload, p *benchPath) (map[string]float64, error) {
	host, port, _ := net.SplitHostPort(p.addr)
	args := w.args(b.opts.scale)
	argv := append([]string{b.tools["redis-benchmark"], "-h", host, "-p", port, "--csv"}, args...)
	cpu0 := pathCPU(p)
	ctx, cancel := context.WithTimeout(b.ctx, 180*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if w.stdin != "" {
		f, err := os.Open(filepath.Join(b.dir, w.stdin))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		cmd.Stdin = f
	}
	b.recordWorkload(w.name, argv)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("redis-benchmark %s: %v: %s", w.name, err, redisbench.LastLine(stderr.String()+stdout.String()))
	}
	rows, err := redisbench.Parse(stdout.Bytes())
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	if err := w.parse(rows, out); err != nil {
		return nil, fmt.Errorf("redis-benchmark %s: %w: %s", w.name, err, redisbench.LastLine(stdout.String()+stderr.String()))
	}
	if cpu1 := pathCPU(p); w.cpu != "" && cpu0 != nil && cpu1 != nil {
		units := float64(argN(args)) * w.perN
		if units > 0 {
			var ticks int64
			for pid, t1 := range cpu1 {
				ticks += t1 - cpu0[pid] // a process born meanwhile counts whole
			}
			secs := float64(ticks) / clockTicks
			if w.perN < 1 { // per GiB, in ms
				out[w.cpu] = secs * 1e3 / units
			} else { // per request, in µs
				out[w.cpu] = secs * 1e6 / units
			}
		}
	}
	return out, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times.
const clockTicks = 100

// argN returns the -n of a redis-benchmark argument list.
func argN(args []string) int {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-n" {
			n, _ := strconv.Atoi(args[i+1])
			return n
		}
	}
	return 0
}

// pathCPU returns utime+stime+cutime+cstime in ticks of every client- and
// server-side process of p (children that socat reaped count in cutime);
// nil for a path without processes of its own (direct).
func pathCPU(p *benchPath) map[int]int64 {
	var pids []int
	for _, f := range []func() []int{p.clientPIDs, p.serverPIDs} {
		if f != nil {
			pids = append(pids, f()...)
		}
	}
	if p.name == pathDirect || len(pids) == 0 {
		return nil
	}
	out := map[int]int64{}
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
		if len(f) < 15 {
			continue
		}
		var t int64
		for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[k], 10, 64)
			t += v
		}
		out[pid] = t
	}
	return out
}

// idleResult is the outcome of the idle-connection test on one path.
type idleResult struct {
	conns                  int
	failed                 int
	clientKiB, serverKiB   float64 // RSS per connection; -1 when not measured
	clientBase, clientPeak int64   // KiB
	serverBase, serverPeak int64
	gorBefore, gorDuring   [2]int // client, server; -1 unknown
	gorAfter               [2]int
	streamsAfter           int // server's cachetun_streams after close; -1 unknown
	// Go runtime memory of connect and server from /debug/pprof/heap?debug=1
	// (KiB, before and during): where the RSS goes.
	memBefore, memDuring [2]goMem
	leak                 string
	openSecs             float64
	note                 string
}

// runIdle opens n connections through p, sends one GET on each, holds them
// all open, measures RSS, closes them and checks that the goroutines go
// back to their baseline.
func (b *bench) runIdle(p *benchPath, n int) (*idleResult, error) {
	res := &idleResult{clientKiB: -1, serverKiB: -1, streamsAfter: -1,
		gorBefore: [2]int{-1, -1}, gorDuring: [2]int{-1, -1}, gorAfter: [2]int{-1, -1}}
	sum := func(f func() []int) int64 {
		if f == nil {
			return -1
		}
		var t int64
		for _, pid := range f() {
			if r, err := rssKiB(pid); err == nil {
				t += r
			}
		}
		return t
	}
	settle := func() { time.Sleep(1500 * time.Millisecond) }
	settle()
	res.clientBase, res.serverBase = sum(p.clientPIDs), sum(p.serverPIDs)
	res.gorBefore = b.goroutines(p)
	res.memBefore = b.goMem(p)

	conns := make([]net.Conn, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := make([]byte, 5)
			for i := range jobs {
				c, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(30 * time.Second))
					if _, err = c.Write(redisProbe); err == nil {
						_, err = io.ReadFull(c, reply)
					}
					_ = c.SetDeadline(time.Time{})
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				conns[i] = c
			}
		}()
	}
	deadline := time.Now().Add(120 * time.Second)
	for i := 0; i < n && time.Now().Before(deadline) && b.ctx.Err() == nil; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	res.openSecs = time.Since(start).Seconds()
	for _, c := range conns {
		if c != nil {
			res.conns++
		}
	}
	res.failed = n - res.conns
	if e, ok := firstErr.Load().(string); ok {
		res.note = fmt.Sprintf("%d failed, first error: %s", failed.Load(), e)
	}
	settle()
	res.clientPeak, res.serverPeak = sum(p.clientPIDs), sum(p.serverPIDs)
	res.gorDuring = b.goroutines(p)
	res.memDuring = b.goMem(p)
	if b.opts.heapDir != "" && p.clientPprof != "" {
		b.saveIdleProfiles(p)
	}
	if res.conns > 0 {
		if res.clientBase >= 0 {
			res.clientKiB = float64(res.clientPeak-res.clientBase) / float64(res.conns)
		}
		if res.serverBase >= 0 {
			res.serverKiB = float64(res.serverPeak-res.serverBase) / float64(res.conns)
		}
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	// Leak check: every goroutine above the baseline must go within 30s.
	if p.clientPprof != "" {
		slack := 5
		ok := waitFor(b.ctx, nil, 30*time.Second, "goroutines back to baseline", func() bool {
			g := b.goroutines(p)
			res.gorAfter = g
			res.streamsAfter = b.serverStreams(p)
			return g[0] >= 0 && g[1] >= 0 && g[0] <= res.gorBefore[0]+slack && g[1] <= res.gorBefore[1]+slack && res.streamsAfter == 0
		}) == nil
		if ok {
			res.leak = "none"
		} else {
			res.leak = fmt.Sprintf("LEAK: goroutines %d/%d (client/server) 30s after close, baseline %d/%d, streams %d",
				res.gorAfter[0], res.gorAfter[1], res.gorBefore[0], res.gorBefore[1], res.streamsAfter)
		}
	}
	return res, nil
}

var (
	goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)
	promGoroutines = regexp.MustCompile(`(?m)^go_goroutines (\d+)`)
	// cachetun_streams is labelled by transport and target: sum the series.
	promStreams = regexp.MustCompile(`(?m)^cachetun_streams(?:\{[^}]*\})? ([0-9.e+]+)$`)
)

// goroutines returns the goroutine counts of connect (pprof) and server
// (go_goroutines of /metrics), -1 when unknown.
func (b *bench) goroutines(p *benchPath) [2]int {
	g := [2]int{-1, -1}
	if p.clientPprof == "" {
		return g
	}
	if body, err := httpGet("http://" + p.clientPprof + "/debug/pprof/goroutine?debug=1"); err == nil {
		if m := goroutineTotal.FindSubmatch(body); m != nil {
			g[0], _ = strconv.Atoi(string(m[1]))
		}
	}
	if body, err := httpGet("http://" + p.serverMetrics + "/metrics"); err == nil {
		if m := promGoroutines.FindSubmatch(body); m != nil {
			g[1], _ = strconv.Atoi(string(m[1]))
		}
	}
	return g
}

// serverStreams returns the gateway's cachetun_streams gauge.
func (b *bench) serverStreams(p *benchPath) int {
	body, err := httpGet("http://" + p.serverMetrics + "/metrics")
	if err != nil {
		return -1
	}
	return streamsGauge(body)
}

// streamsGauge sums the series of cachetun_streams in a /metrics body; -1
// when the body has no such gauge.
func streamsGauge(body []byte) int {
	ms := promStreams.FindAllSubmatch(body, -1)
	if ms == nil {
		// No series yet: the gauge has no labelled child before the
		// first stream, so a gateway that served none shows none.
		if strings.Contains(string(body), "# TYPE cachetun_streams gauge") {
			return 0
		}
		return -1
	}
	var n float64
	for _, m := range ms {
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			return -1
		}
		n += v
	}
	return int(n)
}

// saveIdleProfiles writes heap and goroutine profiles of connect and
// server while the idle connections are held.
func (b *bench) saveIdleProfiles(p *benchPath) {
	tr := cachetunTransport[p.name]
	for side, addr := range map[string]string{"client": p.clientPprof, "server": p.serverPprof} {
		for _, what := range []string{"heap", "goroutine"} {
			body, err := httpGet("http://" + addr + "/debug/pprof/" + what)
			if err != nil {
				b.log.Printf("idle profile %s %s: %v", side, what, err)
				continue
			}
			f := filepath.Join(b.opts.heapDir, fmt.Sprintf("idle-%s-%s-%s.pprof", tr, side, what))
			if err := os.WriteFile(f, body, 0o644); err != nil {
				b.log.Printf("idle profile: %v", err)
			}
		}
	}
}

// goMem is what the Go runtime of one process holds, in KiB.
type goMem struct{ heapInuse, stackInuse int64 }

var (
	memHeapInuse  = regexp.MustCompile(`(?m)^# HeapInuse = (\d+)`)
	memStackInuse = regexp.MustCompile(`(?m)^# Stack = (\d+)`)
)

// goMem reads the runtime.MemStats of connect and server.
func (b *bench) goMem(p *benchPath) [2]goMem {
	var out [2]goMem
	for i, addr := range []string{p.clientPprof, p.serverPprof} {
		out[i] = goMem{-1, -1}
		if addr == "" {
			continue
		}
		body, err := httpGet("http://" + addr + "/debug/pprof/heap?debug=1")
		if err != nil {
			continue
		}
		if m := memHeapInuse.FindSubmatch(body); m != nil {
			v, _ := strconv.ParseInt(string(m[1]), 10, 64)
			out[i].heapInuse = v / 1024
		}
		if m := memStackInuse.FindSubmatch(body); m != nil {
			v, _ := strconv.ParseInt(string(m[1]), 10, 64)
			out[i].stackInuse = v / 1024
		}
	}
	return out
}
