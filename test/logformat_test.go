package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/test/testenv"
)

// TestLogFormat_JSON runs the real gateway with --log-format json, sends
// real traffic (a PING through a QUIC, a TLS and an SSH session, a login with an
// unknown key), stops it, and parses every line it wrote as JSON: the
// audit lines a log pipeline reads have durations as duration_ms numbers,
// the key's fingerprint and comment as separate fields, a session end with
// target, result and reason, and one line per failed login (no follow-up
// "authentication aborted" line).
func TestLogFormat_JSON(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "json-ops@laptop")
	stranger := newKey(t, "stranger")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
		Authorized: []string{k.Line},
		Args:       []string{"--log-format", "json"},
	})
	transports := []string{"quic", "tls", "ssh"}
	for i, tr := range transports {
		c := mustConnect(t, g, tr, "cache", k)
		conn, err := net.Dial("tcp", c.Local(t, r.Addr))
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 7)
		if _, err := conn.Write([]byte("PING\r\n")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "+PONG\r\n" {
			t.Fatalf("%s: PING through the gateway: %q %v", tr, buf, err)
		}
		conn.Close()
		n := i + 1
		waitFor(t, 10*time.Second, "the stream's audit line", func() bool {
			return strings.Count(g.Log(), `"msg":"stream"`) == n
		})
		c.cancel() // the client leaves: the session ends
	}
	waitFor(t, 10*time.Second, "a session end line per transport", func() bool {
		return strings.Count(g.Log(), `"msg":"session end"`) == len(transports)
	})
	if _, err := startConnect(t, g, "quic", "cache", stranger); err == nil {
		t.Fatal("a key that is not in authorized_keys got a session")
	}
	g.WaitLog(t, `"msg":"authentication failed"`, 10*time.Second)
	g.Stop(t)

	var byMsg = map[string][]map[string]any{}
	for i, line := range strings.Split(strings.TrimSpace(g.Log()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i+1, err, line)
		}
		msg, _ := m["msg"].(string)
		byMsg[msg] = append(byMsg[msg], m)
	}
	fp := ssh.FingerprintSHA256(k.Pub)
	num := func(m map[string]any, field string) float64 {
		t.Helper()
		v, ok := m[field].(float64)
		if !ok {
			t.Fatalf("%q line: %s = %#v, want a number (%v)", m["msg"], field, m[field], m)
		}
		return v
	}
	str := func(m map[string]any, field, want string) {
		t.Helper()
		if got, _ := m[field].(string); got != want {
			t.Errorf("%q line: %s = %q, want %q (%v)", m["msg"], field, got, want, m)
		}
	}
	noField := func(m map[string]any, field string) {
		t.Helper()
		if _, ok := m[field]; ok {
			t.Errorf("%q line has %s, which the JSON format replaces: %v", m["msg"], field, m)
		}
	}

	streams := byMsg["stream"]
	if len(streams) != len(transports) {
		t.Fatalf("%d stream lines, want %d:\n%s", len(streams), len(transports), g.Log())
	}
	for _, m := range streams {
		if d := num(m, "duration_ms"); d <= 0 || d > 10000 {
			t.Errorf("stream duration_ms = %v, want 0 < d <= 10000", d)
		}
		noField(m, "duration")
		noField(m, "key")
		str(m, "key_fp", fp)
		str(m, "key_comment", "json-ops@laptop")
		str(m, "target", "cache")
		str(m, "node", r.Addr)
		str(m, "result", "ok")
		if up, down := num(m, "bytes_up"), num(m, "bytes_down"); up != 6 || down != 7 {
			t.Errorf("stream bytes up/down = %v/%v, want 6/7 (PING and +PONG)", up, down)
		}
	}
	for _, msg := range []string{"session start", "session end"} {
		if n := len(byMsg[msg]); n != len(transports) {
			t.Fatalf("%d %q lines, want %d", n, msg, len(transports))
		}
	}
	seen := map[string]bool{}
	for _, m := range byMsg["session end"] {
		str(m, "key_fp", fp)
		str(m, "key_comment", "json-ops@laptop")
		str(m, "target", "cache")
		str(m, "result", "closed")
		str(m, "reason", "the client closed the session")
		if d := num(m, "duration_ms"); d <= 0 {
			t.Errorf("session end duration_ms = %v, want > 0", d)
		}
		noField(m, "duration")
		if num(m, "streams") != 1 {
			t.Errorf("session end streams = %v, want 1", m["streams"])
		}
		tr, _ := m["transport"].(string)
		seen[tr] = true
	}
	for _, tr := range transports {
		if !seen[tr] {
			t.Errorf("no session end line for transport %s", tr)
		}
	}
	// One failed login, one line: the client's close after the refusal
	// is no event of its own.
	if n := len(byMsg["authentication failed"]); n != 1 {
		t.Errorf("%d authentication failed lines, want 1", n)
	} else {
		str(byMsg["authentication failed"][0], "code", "unknown_key")
		// The refused key is a field of its own, as on the other lines.
		str(byMsg["authentication failed"][0], "key_fp", auth.Fingerprint(stranger.Pub))
	}
	if n := len(byMsg["authentication aborted"]); n != 0 {
		t.Errorf("%d authentication aborted lines after a refused login, want 0: %v", n, byMsg["authentication aborted"])
	}
	if d := byMsg["draining: no new sessions; waiting for open streams"]; len(d) != 1 {
		t.Errorf("%d draining lines, want 1", len(d))
	} else if v := num(d[0], "drain_timeout_ms"); v != 3000 {
		t.Errorf("drain_timeout_ms = %v, want 3000 (drain_timeout: 3s)", v)
	}
}

// TestLogFormat_Precedence: the log format comes from --log-format, else
// CACHETUN_LOG_FORMAT, else log_format: in server.yaml, else text.
func TestLogFormat_Precedence(t *testing.T) {
	r := testenv.StartRedis(t)
	k := newKey(t, "fmt")
	for _, c := range []struct {
		name  string
		extra string
		env   []string
		args  []string
		json  bool
	}{
		{name: "default", json: false},
		{name: "file", extra: "log_format: json\n", json: true},
		{name: "env over file", extra: "log_format: json\n", env: []string{"CACHETUN_LOG_FORMAT=text"}, json: false},
		{name: "flag over env", env: []string{"CACHETUN_LOG_FORMAT=text"}, args: []string{"--log-format", "json"}, json: true},
		{name: "flag over file", extra: "log_format: json\n", args: []string{"--log-format", "text"}, json: false},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := startGatewayProc(t, gatewayProcOpts{
				Targets:    map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
				Authorized: []string{k.Line},
				NoSSH:      true,
				Extra:      c.extra,
				Env:        c.env,
				Args:       c.args,
			})
			g.Stop(t)
			lines := strings.Split(strings.TrimSpace(g.Log()), "\n")
			if len(lines) < 3 {
				t.Fatalf("%d log lines, want at least listening, ready, stopped:\n%s", len(lines), g.Log())
			}
			for _, line := range lines {
				var m map[string]any
				isJSON := json.Unmarshal([]byte(line), &m) == nil
				if isJSON != c.json {
					t.Errorf("line %q: JSON %v, want %v", line, isJSON, c.json)
				}
				if !c.json && !strings.HasPrefix(line, "time=") {
					t.Errorf("line %q is not a text line", line)
				}
			}
		})
	}
}
