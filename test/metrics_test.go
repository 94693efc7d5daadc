package test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// serveMetrics serves the gateway's metrics handler on a loopback port
// and returns its base URL. It outlives the gateway, so a test can ask
// /readyz after a drain. (Run's own metrics listener is what the gateway
// process tests scrape.)
func serveMetrics(t testing.TB, g *gateway) string {
	t.Helper()
	hs := httptest.NewServer(g.Srv.MetricsHandler())
	t.Cleanup(hs.Close)
	return hs.URL
}

// gatewayMetrics reads g's metrics once, without a listener. Reading
// them runs the readiness check, which connects to every target node
// (cached 3 s): a test that counts the connections a cache received
// must take its counts around it.
func gatewayMetrics(t testing.TB, g *gateway) metricSet {
	t.Helper()
	rec := httptest.NewRecorder()
	g.Srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d: %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// gatewayMetric is the value of family name in g's metrics, summed over
// the series whose labels include want (see metricSet.value); 0 when
// there is none.
func gatewayMetric(t testing.TB, g *gateway, name string, want map[string]string) float64 {
	t.Helper()
	v, _ := gatewayMetrics(t, g).value(name, want)
	return v
}

// httpGet returns the status code and body of a GET.
func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// scrape fetches /metrics and parses the text exposition format.
func scrape(t testing.TB, base string) metricSet {
	t.Helper()
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: status %d: %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

type metricSet map[string]*dto.MetricFamily

// value returns the value of the series of family name whose labels
// include want (other labels may be there too), summed over every such
// series; ok is false when there is none. Histograms give their count.
func (ms metricSet) value(name string, want map[string]string) (v float64, ok bool) {
	f := ms[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, w := range want {
			if have[k] != w {
				continue next
			}
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.GetCounter().GetValue()
		case m.Gauge != nil:
			v += m.GetGauge().GetValue()
		case m.Histogram != nil:
			v += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return v, ok
}

// labelSets lists the label sets of family name, for failure messages.
func (ms metricSet) labelSets(name string) string {
	f := ms[name]
	if f == nil {
		return "(no such family)"
	}
	var out []string
	for _, m := range f.GetMetric() {
		var l []string
		for _, lp := range m.GetLabel() {
			l = append(l, lp.GetName()+"="+lp.GetValue())
		}
		out = append(out, "{"+strings.Join(l, ",")+"}")
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestMetrics_AfterTraffic: real redis-cli traffic through a gateway over
// QUIC and TLS, a refused key, an unknown target, a stream to a node that
// refuses connections and a discovery round that fails; /metrics then has
// every series with the labels an operator filters on, and no label value
// with a space.
func TestMetrics_AfterTraffic(t *testing.T) {
	r := testenv.StartRedis(t)
	// A port with nothing behind it: dials are refused.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	alice := newKey(t, "alice@laptop")
	targets := map[string]*server.Target{
		"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}},
		"gone":  {Type: server.TypeRedis, Nodes: []string{deadAddr}},
		// A standalone redis answers CLUSTER SHARDS with an error: each
		// discovery round of this target fails.
		"notcluster": {Type: server.TypeRedisCluster, Nodes: []string{r.Addr}, Refresh: time.Hour},
	}
	g := startGateway(t, targets, []string{alice.Line}, func(c *server.Config) { c.MetricsKeyLabel = true })
	base := serveMetrics(t, g)

	for _, tr := range []string{"quic", "tls"} {
		c := mustConnect(t, g, tr, "cache", alice)
		local := c.Local(t, r.Addr)
		if got := redisCLI(t, local, "SET", "k-"+tr, "v"); got != "OK" {
			t.Fatalf("SET over %s: got %q", tr, got)
		}
		if got := redisCLI(t, local, "GET", "k-"+tr); got != "v" {
			t.Fatalf("GET over %s: got %q", tr, got)
		}
	}
	// A stream to a node that refuses the connection.
	cg := mustConnect(t, g, "tls", "gone", alice)
	if conn, err := net.DialTimeout("tcp", cg.Local(t, deadAddr), 5*time.Second); err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Read(make([]byte, 1)) // ends when the gateway refuses the stream
		conn.Close()
	}
	// A key the gateway does not know, and a target it does not have.
	mallory := newKey(t, "mallory@elsewhere")
	if _, err := startConnect(t, g, "tls", "cache", mallory); err == nil {
		t.Fatal("unknown key connected")
	}
	if _, err := startConnect(t, g, "tls", "no-such-target", alice); err == nil {
		t.Fatal("unknown target connected")
	}

	aliceFP := auth.Fingerprint(alice.Pub)
	var ms metricSet
	type series struct {
		name   string
		labels map[string]string
		min    float64 // the value is at least this
	}
	want := []series{
		{"cachetun_build_info", map[string]string{"version": g.Config.Version}, 1},
		{"cachetun_sessions", map[string]string{"transport": "quic", "target": "cache", "key": aliceFP}, 1},
		{"cachetun_sessions", map[string]string{"transport": "tls", "target": "cache", "key": aliceFP}, 1},
		{"cachetun_sessions_total", map[string]string{"transport": "quic", "target": "cache"}, 1},
		{"cachetun_streams_total", map[string]string{"transport": "quic", "target": "cache", "result": "ok", "key": aliceFP}, 2},
		{"cachetun_streams_total", map[string]string{"transport": "tls", "target": "cache", "result": "ok"}, 2},
		{"cachetun_streams_total", map[string]string{"transport": "tls", "target": "gone", "result": "unreachable"}, 1},
		{"cachetun_streams", map[string]string{"transport": "tls", "target": "cache"}, 0},
		{"cachetun_bytes_total", map[string]string{"target": "cache", "direction": "up", "key": aliceFP}, 1},
		{"cachetun_bytes_total", map[string]string{"target": "cache", "direction": "down"}, 1},
		{"cachetun_upstream_dial_seconds", map[string]string{"target": "cache"}, 4},
		{"cachetun_upstream_dial_errors_total", map[string]string{"target": "gone", "reason": "refused"}, 1},
		{"cachetun_auth_failures_total", map[string]string{"reason": "unknown_key"}, 1},
		{"cachetun_auth_failures_total", map[string]string{"reason": "unknown_target"}, 1},
		{"cachetun_discovery_rounds_total", map[string]string{"target": "notcluster", "result": "error"}, 1},
		{"cachetun_streams_resumed_total", nil, 0},
		{"cachetun_config_reloads_total", map[string]string{"result": "error"}, 0},
		{"cachetun_quic_send_errors_total", map[string]string{"errno": "ENETUNREACH"}, 0},
		{"cachetun_quic_send_errors_total", map[string]string{"errno": "EPERM"}, 0},
		{"cachetun_quic_window_refreshes_total", nil, 0},
	}
	// Stream and session counts land when the stream ends; wait for them.
	waitFor(t, 10*time.Second, "every series", func() bool {
		ms = scrape(t, base)
		for _, w := range want {
			if v, ok := ms.value(w.name, w.labels); !ok || v < w.min {
				return false
			}
		}
		return true
	})
	for _, w := range want {
		v, _ := ms.value(w.name, w.labels)
		t.Logf("%s%v = %g", w.name, w.labels, v)
	}
	if v, _ := ms.value("cachetun_streams_resumed_total", nil); v != 0 {
		t.Errorf("cachetun_streams_resumed_total = %g, want 0 (no resumption yet)", v)
	}
	// A refused login is one failure: mallory's client leaving after the
	// refusal is not a second one ("no_hello" is for a connection that
	// never sent a Hello).
	if v, _ := ms.value("cachetun_auth_failures_total", map[string]string{"reason": "unknown_key"}); v != 1 {
		t.Errorf("cachetun_auth_failures_total{reason=unknown_key} = %g, want 1 (one refused login)", v)
	}
	if v, _ := ms.value("cachetun_auth_failures_total", map[string]string{"reason": "no_hello"}); v != 0 {
		t.Errorf("cachetun_auth_failures_total{reason=no_hello} = %g, want 0: the refused login was counted twice", v)
	}
	if v, _ := ms.value("cachetun_upstream_dial_seconds", map[string]string{"target": "gone"}); v != 0 {
		t.Errorf("failed dials are in the latency histogram: count %g", v)
	}
	// No label value has a space, and the client-chosen target name of the
	// refused session is not a label value.
	for name, f := range ms {
		if !strings.HasPrefix(name, "cachetun_") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.ContainsAny(lp.GetValue(), " \t") || lp.GetValue() == "no-such-target" {
					t.Errorf("%s{%s=%q}: bad label value", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
	if t.Failed() {
		for _, name := range []string{"cachetun_streams_total", "cachetun_auth_failures_total"} {
			t.Logf("%s: %s", name, ms.labelSets(name))
		}
	}
}

// TestHealth_ReadyzFollowsNodes: /healthz is 200 throughout; /readyz is
// 200 while the target's redis-server runs, 503 naming the target once it
// is stopped (within the 3 s cache plus a 1 s dial), and 200 again after a
// restart; cachetun_target_nodes_up follows.
func TestHealth_ReadyzFollowsNodes(t *testing.T) {
	r := testenv.StartRedis(t)
	other := testenv.StartRedis(t)
	k := newKey(t, "alice@laptop")
	g := startGateway(t, map[string]*server.Target{
		"cache": {Type: server.TypeRedis, Nodes: []string{r.Addr}},
		"other": {Type: server.TypeRedis, Nodes: []string{other.Addr}},
	}, []string{k.Line})
	base := serveMetrics(t, g)

	readyz := func() (int, string) { return httpGet(t, base+"/readyz") }
	if code, body := httpGet(t, base+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q, want 200 ok", code, body)
	}
	if code, body := readyz(); code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Fatalf("/readyz with redis up: %d %q, want 200 ready", code, body)
	}

	r.Stop()
	start := time.Now()
	var body string
	waitFor(t, 10*time.Second, "/readyz 503 after the redis-server stopped", func() bool {
		var code int
		code, body = readyz()
		return code == http.StatusServiceUnavailable
	})
	t.Logf("/readyz went 503 %s after the stop: %q", time.Since(start).Round(time.Millisecond), body)
	if !strings.Contains(body, `target "cache": 0 of 1 nodes reachable`) || strings.Contains(body, `"other"`) {
		t.Errorf("/readyz body %q: want the stopped target named, and only it", body)
	}
	if code, _ := httpGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with a target down: %d, want 200 (the process is alive)", code)
	}
	ms := scrape(t, base)
	if v, ok := ms.value("cachetun_target_nodes_up", map[string]string{"target": "cache"}); !ok || v != 0 {
		t.Errorf("cachetun_target_nodes_up{target=cache} = %g (present %v), want 0", v, ok)
	}
	if v, _ := ms.value("cachetun_target_nodes_up", map[string]string{"target": "other"}); v != 1 {
		t.Errorf("cachetun_target_nodes_up{target=other} = %g, want 1", v)
	}
	if v, ok := ms.value("cachetun_ready", nil); !ok || v != 0 {
		t.Errorf("cachetun_ready = %g (present %v), want 0", v, ok)
	}

	r.Restart()
	waitFor(t, 10*time.Second, "/readyz 200 after the redis-server restarted", func() bool {
		code, _ := readyz()
		return code == http.StatusOK
	})
	// Draining makes the gateway unready at once, whatever its targets.
	g.Stop()
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("/readyz after drain: %d %q, want 503 draining", code, body)
	}
}

// TestHealth_TLSUpstream: against a real TLS redis-server, a target with
// the right CA is ready and one whose server_name the certificate does not
// name is not, /readyz saying it was the TLS handshake; a stream to the
// latter counts as dial error reason tls, one with a wrong AUTH password
// as reason auth, and a good one lands in the latency histogram.
func TestHealth_TLSUpstream(t *testing.T) {
	secret := randomSecret(t)
	r := testenv.StartRedisTLS(t, "--requirepass", randomSecret(t))
	r.AddUser(t, testenv.ACLUser{Name: "app", PasswordFile: writeSecret(t, secret)})
	k := newKey(t, "ops@laptop")
	good := &server.UpstreamTLS{CAFile: r.CAFile}
	g := startGateway(t, map[string]*server.Target{
		"secure":    {Type: server.TypeRedis, Nodes: []string{r.Addr}, TLS: good, Auth: &server.UpstreamAuth{Username: "app", PasswordFile: writeSecret(t, secret)}},
		"wrongname": {Type: server.TypeRedis, Nodes: []string{r.Addr}, TLS: &server.UpstreamTLS{CAFile: r.CAFile, ServerName: "not-this-cache.example"}},
		"wrongpass": {Type: server.TypeRedis, Nodes: []string{r.Addr}, TLS: good, Auth: &server.UpstreamAuth{Username: "app", PasswordFile: writeSecret(t, "not-the-password")}},
	}, []string{k.Line})
	base := serveMetrics(t, g)

	code, body := httpGet(t, base+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `target "wrongname": 0 of 1 nodes reachable`) ||
		!strings.Contains(body, "upstream tls handshake") || strings.Contains(body, `"secure"`) || strings.Contains(body, `"wrongpass"`) {
		t.Fatalf("/readyz: %d %q; want 503 naming only wrongname, for its TLS handshake (AUTH is not probed)", code, body)
	}

	for _, name := range []string{"secure", "wrongname", "wrongpass"} {
		c := mustConnect(t, g, "tls", name, k)
		conn, err := net.DialTimeout("tcp", c.Local(t, r.Addr), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte("PING\r\n"))
		buf := make([]byte, 7)
		n, _ := io.ReadFull(conn, buf)
		conn.Close()
		if (name == "secure") != (string(buf[:n]) == "+PONG\r\n") {
			t.Fatalf("PING via %s: %q", name, buf[:n])
		}
	}
	want := []struct {
		name   string
		labels map[string]string
	}{
		{"cachetun_upstream_dial_errors_total", map[string]string{"target": "wrongname", "reason": "tls"}},
		{"cachetun_upstream_dial_errors_total", map[string]string{"target": "wrongpass", "reason": "auth"}},
		{"cachetun_upstream_dial_seconds", map[string]string{"target": "secure"}},
		{"cachetun_target_nodes_up", map[string]string{"target": "secure"}},
	}
	var ms metricSet
	waitFor(t, 10*time.Second, "dial series", func() bool {
		ms = scrape(t, base)
		for _, w := range want {
			if v, _ := ms.value(w.name, w.labels); v != 1 {
				return false
			}
		}
		return true
	})
	if v, _ := ms.value("cachetun_target_nodes_up", map[string]string{"target": "wrongname"}); v != 0 {
		t.Errorf("cachetun_target_nodes_up{target=wrongname} = %g, want 0", v)
	}
}
