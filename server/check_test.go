package server

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
