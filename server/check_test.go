package server

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
)

// TestNew_Warns: the running gateway logs a WARN line at load for each
// setting that `server check` warns about (insecure_skip_verify, a metrics
// listener beyond loopback) and for a targets= name that is not
// configured, with the authorized_keys line.
func TestNew_Warns(t *testing.T) {
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(hostKey, "host"); err != nil {
		t.Fatal(err)
	}
	client, err := auth.GenerateKey(filepath.Join(dir, "id"), "alice")
	if err != nil {
		t.Fatal(err)
	}
	ak := filepath.Join(dir, "authorized_keys")
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(client)))
	if err := os.WriteFile(ak, []byte("# ops\n"+`targets="cache,prod-redsi" `+line+" alice\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte("host_key: " + hostKey + "\nauthorized_keys: " + ak + `
targets:
  cache: {type: redis, nodes: ["127.0.0.1:6379"], tls: {insecure_skip_verify: true}}
metrics: "0.0.0.0:9464"
`))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := New(cfg, slog.New(slog.NewTextHandler(&buf, nil))); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		`level=WARN msg="authorized_keys names a target that is not configured" component=server file=` + ak + ` line=2 target=prod-redsi`,
		`level=WARN msg="config warning" component=server field=targets.cache.tls.insecure_skip_verify`,
		`level=WARN msg="config warning" component=server field=metrics warning="metrics \"0.0.0.0:9464\" is not a loopback address`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "level=WARN"); n != 3 {
		t.Errorf("%d WARN lines, want 3:\n%s", n, out)
	}
}

// TestIsLoopback: only addresses that cannot be reached from another host
// pass without a warning.
func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9464": true, "[::1]:9464": true, "localhost:9464": true, "127.0.0.2:1": true,
		":9464": false, "0.0.0.0:9464": false, "10.0.1.5:9464": false, "[::]:9464": false,
		"metrics.internal:9464": false, "garbage": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestCheck_KeyOptionWarnings: server check, and the gateway at load,
// warn about lines whose options refuse their key (restrict,
// no-port-forwarding, also on a CA line) and about permitopen= entries
// that name no target, N.TARGET or configured node; nothing for
// restrict,port-forwarding or entries that do name something.
func TestCheck_KeyOptionWarnings(t *testing.T) {
	dir := t.TempDir()
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := auth.GenerateKey(hostKey, "host"); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i, opts := range []string{
		`restrict`,
		`cert-authority,no-port-forwarding`,
		`permitopen="cache:*,0.cache:1,127.0.0.1:6379,[2001:db8::1]:1,*:11211,seed.example.com:1,typo:*,9.nope:*,x.cache:1"`,
		`restrict,port-forwarding`,
	} {
		pub, err := auth.GenerateKey(filepath.Join(dir, "id"+string(rune('a'+i))), "k")
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, opts+" "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))))
	}
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := "host_key: " + hostKey + "\nauthorized_keys: " + ak + `
targets:
  cache: {type: redis, nodes: ["127.0.0.1:6379", "Seed.example.com:6379"]}
`
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range Check(cfgPath, time.Now()) {
		if p.Severity == SeverityError {
			t.Errorf("unexpected error: %v", p)
		}
		got = append(got, p.String())
	}
	want := []string{
		ak + ":1: warning: key SHA256:",
		ak + ":2: warning: every certificate of CA SHA256:",
		`permitopen= entry "typo:*" names no target`,
		`permitopen= entry "9.nope:*" names no target`,
		`permitopen= entry "x.cache:1" names no target`,
	}
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("check output lacks %q:\n%s", w, all)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(got), len(want), all)
	}
	if !strings.Contains(all, "is refused: restrict on this line") || !strings.Contains(all, "is refused: no-port-forwarding on this line") {
		t.Errorf("check output does not name the refusing options:\n%s", all)
	}

	cfg, err := ParseConfig([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := New(cfg, slog.New(slog.NewTextHandler(&buf, nil))); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), `msg="authorized_keys option warning"`); n != len(want) {
		t.Errorf("gateway logged %d option warnings, want %d:\n%s", n, len(want), buf.String())
	}
}
