package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachetun/cachetun/bench/internal/redisbench"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// How the workloads talk to redis:
//
//   - the first reply and a new connection + PING: a raw TCP connection and
//     an inline PING, so that the time is one connection and one round trip
//     and nothing else (go-redis sends HELLO on every new connection, one
//     more round trip, even with Protocol 2);
//   - GET -c 50 and its p99: redis-benchmark, as the loopback bench does;
//   - the 32 MiB GET and SET and the 8 parallel GETs: go-redis, on
//     connections dialled and greeted (HELLO, PING) before the clock starts.

// ping dials nothing: it sends an inline PING on c and waits for +PONG.
func ping(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return fmt.Errorf("send PING: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read PING reply: %w", err)
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING: reply %q, want +PONG", strings.TrimSpace(line))
	}
	return nil
}

// countConn counts the bytes read from and written to a connection, so a
// transfer cut by its time bound can say how far it got.
type countConn struct {
	net.Conn
	read, written atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// oneConn is a go-redis client of a single connection, dialled from
// namespace ns, with its byte counts.
type oneConn struct {
	*redis.Client
	mu   sync.Mutex
	conn *countConn
}

func (o *oneConn) counts() (read, written int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.conn == nil {
		return 0, 0
	}
	return o.conn.read.Load(), o.conn.written.Load()
}

// newClient returns a go-redis client to addr from namespace ns: one
// connection, RESP2, no CLIENT SETINFO, no maintenance notifications, no
// retries (a retry would hide a failure and restart the clock), reads and
// writes bounded by timeout.
func newClient(ns, addr string, timeout time.Duration) *oneConn {
	o := &oneConn{}
	o.Client = redis.NewClient(&redis.Options{
		Addr: addr,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialIn(ns, addr, 10*time.Second)
			if err != nil {
				return nil, err
			}
			cc := &countConn{Conn: c}
			o.mu.Lock()
			o.conn = cc
			o.mu.Unlock()
			return cc, nil
		},
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		MaxRetries:               -1,
		DialerRetries:            1,
		PoolSize:                 1,
		ReadTimeout:              timeout,
		WriteTimeout:             timeout,
		ReadBufferSize:           256 << 10,
		WriteBufferSize:          256 << 10,
	})
	return o
}

// setValue writes n bytes of 'x' to key through rdb.
func setValue(ctx context.Context, rdb *redis.Client, key string, n int) error {
	if err := rdb.Set(ctx, key, bytes.Repeat([]byte("x"), n), 0).Err(); err != nil {
		return fmt.Errorf("SET %s: %w", key, err)
	}
	return nil
}

// transferClients makes the clients of the three transfers (one each for
// the 32 MiB GET and SET, bulkConns for the parallel GETs) and greets them
// all at once: the greeting costs 3 RTT once, not per transfer.
func (w *wan) transferClients(addr string) (get, set *oneConn, bulk []*oneConn, err error) {
	all := make([]*oneConn, 2+bulkConns)
	for i := range all {
		all[i] = newClient(w.laptop, addr, w.bulkCap+10*time.Second)
	}
	if err := greet(w.ctx, all); err != nil {
		for _, c := range all {
			c.Close()
		}
		return nil, nil, nil, err
	}
	return all[0], all[1], all[2:], nil
}

// greet opens each client's connection (dial, HELLO, PING), all at once,
// before a timed transfer, so the clock runs from the request.
func greet(ctx context.Context, cs []*oneConn) error {
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Ping(ctx).Err(); err != nil {
				errs[i] = fmt.Errorf("connect and PING: %w", err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// transfer is the outcome of one timed transfer: MiB/s, and whether it
// was cut at -bulk-timeout (then the rate is what had arrived by then,
// divided by the bound).
type transfer struct {
	rate  float64
	cut   bool
	bytes int64  // for a cut transfer: what had arrived
	note  string // for a cut transfer: how far it got
}

// bounded runs fn (the transfer) and returns its error and duration. If
// fn is still running after bound, atCut is called at once, while the
// transfer is still under way (to count what has arrived), then the
// clients are closed, which ends fn, and cut is true.
func bounded(bound time.Duration, cs []*oneConn, fn func() error, atCut func()) (el time.Duration, cut bool, err error) {
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- fn() }()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case err := <-done:
		return time.Since(t0), false, err
	case <-timer.C:
	}
	el = time.Since(t0)
	atCut()
	for _, c := range cs {
		c.Close()
	}
	<-done
	return el, true, nil
}

// bigGet fetches key (size bytes) on n parallel connections and returns
// the aggregate MiB/s from the request to the last byte; a GET cut at
// -bulk-timeout counts the bytes that had arrived.
func (w *wan) bigGet(cs []*oneConn, key string, size int) (transfer, error) {
	n := len(cs)
	count := func() (sum int64) {
		for _, c := range cs {
			r, _ := c.counts()
			sum += r
		}
		return sum
	}
	base := count()
	var got int64
	el, cut, err := w.bounded(cs, func() error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.Get(w.ctx, key).Bytes()
				if err == nil && len(v) != size {
					err = fmt.Errorf("%d bytes, want %d", len(v), size)
				}
				if err != nil {
					errs[i] = fmt.Errorf("GET %s: %w", key, err)
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}, func() {
		// What arrived: every byte read since the greeting, the reply's
		// "$<len>" header aside (a dozen bytes of 8 MiB or more).
		got = count() - base
	})
	switch {
	case err != nil:
		return transfer{}, err
	case cut:
		return transfer{rate: mib(got) / el.Seconds(), cut: true, bytes: got,
			note: fmt.Sprintf("%.1f of %d MiB", mib(got), n*size>>20)}, nil
	}
	return transfer{rate: mib(int64(n*size)) / el.Seconds()}, nil
}

// bounded is bounded with the run's -bulk-timeout; a cut is no error
// unless the whole run is being stopped.
func (w *wan) bounded(cs []*oneConn, fn func() error, atCut func()) (time.Duration, bool, error) {
	el, cut, err := bounded(w.bulkCap, cs, fn, atCut)
	if cut && w.ctx.Err() != nil {
		return el, false, w.ctx.Err()
	}
	return el, cut, err
}

// bigSet writes a 32 MiB value and returns MiB/s until redis's +OK. A SET
// cut at the bound counts the bytes of the value that redis had received
// (qbuf of CLIENT LIST, asked on the gateway's loopback while the SET is
// still under way), not what the client had written into socket and tunnel
// buffers.
func (w *wan) bigSet(c *oneConn, redisAddr string) (transfer, error) {
	id, err := c.ClientID(w.ctx).Result()
	if err != nil {
		return transfer{}, fmt.Errorf("CLIENT ID: %w", err)
	}
	val := bytes.Repeat([]byte("x"), bigSize)
	var got int64
	var qerr error
	el, cut, err := w.bounded([]*oneConn{c}, func() error {
		if err := c.Set(w.ctx, "wan:set", val, 0).Err(); err != nil {
			return fmt.Errorf("SET wan:set: %w", err)
		}
		return nil
	}, func() { got, qerr = w.queryBuffer(redisAddr, id) })
	switch {
	case err != nil:
		return transfer{}, err
	case cut && qerr != nil:
		return transfer{}, fmt.Errorf("SET wan:set: cut at %v, and then %w", el.Round(100*time.Millisecond), qerr)
	case cut:
		return transfer{rate: mib(got) / el.Seconds(), cut: true, bytes: got,
			note: fmt.Sprintf("%.1f of %d MiB", mib(got), bigSize>>20)}, nil
	}
	return transfer{rate: mib(bigSize) / el.Seconds()}, nil
}

var qbufField = regexp.MustCompile(`\bqbuf=(\d+)\b`)

// queryBuffer returns the qbuf of redis client id: the bytes of a partly
// received command (for a big argument, what has arrived of it).
func (w *wan) queryBuffer(redisAddr string, id int64) (int64, error) {
	rdb := newClient(w.gateway, redisAddr, 5*time.Second)
	defer rdb.Close()
	line, err := rdb.Do(w.ctx, "CLIENT", "LIST", "ID", strconv.FormatInt(id, 10)).Text()
	if err != nil {
		return 0, fmt.Errorf("CLIENT LIST ID %d: %w", id, err)
	}
	m := qbufField.FindStringSubmatch(line)
	if m == nil {
		return 0, fmt.Errorf("CLIENT LIST ID %d: no qbuf in %q", id, line)
	}
	return strconv.ParseInt(m[1], 10, 64)
}

// get50Requests is redis-benchmark's -n for GET -c 50: what 50 connections
// waiting one RTT per GET do in about d, in whole rounds (a multiple of
// 50: a last round that only some connections fill still takes a whole
// RTT, which at 80 ms and 1.5 s, 18.75 rounds, cost 1.3 % of the rate), at
// least 4 rounds.
func get50Requests(rtt, d time.Duration) int {
	rounds := max(4, int(math.Round(d.Seconds()/rtt.Seconds())))
	return getConns * rounds
}

// get50 runs redis-benchmark in the laptop namespace: GET of a 3-byte
// value on 50 connections, -n get50Requests; it returns ops/s and the p99
// latency in ms from its CSV. redis-benchmark opens its 50 connections
// inside its timed run, so ops/s includes their set-up (one RTT, on ssh
// -L the channel opens too); the p99 counts from each request's write.
func (w *wan) get50(addr string, rtt time.Duration) (float64, float64, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, 0, err
	}
	n := get50Requests(rtt, w.get50Dur)
	// Bounded: 4 times the planned length (a lossy link is slower) and 20 s.
	ctx, cancel := context.WithTimeout(w.ctx, 4*w.get50Dur+20*time.Second)
	defer cancel()
	argv := []string{"ip", "netns", "exec", w.laptop, w.redisBenchmark, "-h", host, "-p", port,
		"-c", strconv.Itoa(getConns), "-n", strconv.Itoa(n), "--csv", "GET", get50Key}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark -c %d -n %d: %w: %s", getConns, n, err, redisbench.LastLine(stderr.String()+stdout.String()))
	}
	return parseGet50(stdout.Bytes())
}

// get50Key is the key get50 reads; its row in redis-benchmark's CSV is
// named after the command, "GET wan:small".
const get50Key = "wan:small"

// parseGet50 reads rps and p99_latency_ms of the GET row of
// redis-benchmark's --csv output.
func parseGet50(out []byte) (float64, float64, error) {
	rows, err := redisbench.Parse(out)
	if err != nil {
		return 0, 0, err
	}
	rps, err := rows.Value("GET "+get50Key, "rps")
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark CSV: %w in %q", err, redisbench.LastLine(string(out)))
	}
	p99, err := rows.Value("GET "+get50Key, "p99_latency_ms")
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark CSV: %w in %q", err, redisbench.LastLine(string(out)))
	}
	return rps, p99, nil
}
