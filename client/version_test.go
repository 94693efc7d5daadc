package client

import (
	"path/filepath"
	"testing"

	"github.com/cachetun/cachetun/auth"
)

// The Hello names the build version the program passed in Options, and
// "dev" when it passed none.
func TestClient_HelloVersion(t *testing.T) {
	id := filepath.Join(t.TempDir(), "id_ed25519")
	if _, err := auth.GenerateKey(id, "test"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ version, want string }{
		{"v1.2.3", "cachetun v1.2.3"},
		{"", "cachetun dev"},
	} {
		c, err := New(Options{
			Version:    tc.version,
			Servers:    []string{"127.0.0.1:4433"},
			Target:     "cache",
			Identity:   id,
			KnownHosts: filepath.Join(t.TempDir(), "known_hosts"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.hello().Client; got != tc.want {
			t.Errorf("Options.Version %q: Hello.Client = %q, want %q", tc.version, got, tc.want)
		}
	}
}
