package sshdenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSetup makes the keys with the real ssh-keygen, has the real sshd
// check the config (sshd -t) and pins the host key in both known_hosts
// forms.
func TestSetup(t *testing.T) {
	for _, tool := range []string{"ssh-keygen", "ssh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := filepath.Join(t.TempDir(), "sshd")
	var ran [][]string
	e, err := Setup(context.Background(), dir, "", "sshdenv-test", func(argv []string) { ran = append(ran, argv) })
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if len(ran) != 2 {
		t.Fatalf("recorded %d commands, want 2 (one ssh-keygen per key)", len(ran))
	}
	pub, err := os.ReadFile(e.ClientKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	ak, err := os.ReadFile(e.AuthorizedKeys)
	if err != nil || string(ak) != string(pub) {
		t.Fatalf("authorized_keys = %q (%v), want the client key %q", ak, err, pub)
	}
	for _, f := range []string{e.HostKey, e.ClientKey, e.AuthorizedKeys} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v, mode %v: want no group/other bits", f, err, st.Mode())
		}
	}

	conf := filepath.Join(dir, "sshd_config")
	cfg, err := e.WriteConfig(conf, "test sshd", "127.0.0.1", 2022)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# test sshd\n", "Port 2022\n", "ListenAddress 127.0.0.1\n", "HostKey " + e.HostKey + "\n",
		"AuthorizedKeysFile " + e.AuthorizedKeys + "\n", "AllowTcpForwarding local\n", "PasswordAuthentication no\n"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q", want)
		}
	}
	argv := SSHDArgs("", conf)
	if _, err := os.Stat(argv[0]); err == nil && os.Geteuid() == 0 {
		// -t: check the config and the keys, then exit.
		if out, err := exec.Command(argv[0], "-t", "-f", conf).CombinedOutput(); err != nil {
			t.Fatalf("sshd -t: %v: %s", err, out)
		}
	} else {
		t.Log("sshd not installed or not root: config not checked by sshd -t")
	}

	host, _ := os.ReadFile(e.HostKey + ".pub")
	f := strings.Fields(string(host))
	for _, c := range []struct {
		port int
		name string
	}{{22, "10.0.0.2"}, {2022, "[127.0.0.1]:2022"}} {
		kh := filepath.Join(dir, "known_hosts")
		h := strings.Trim(strings.Split(strings.TrimPrefix(c.name, "["), "]")[0], "[]")
		if err := e.WriteKnownHosts(kh, h, c.port); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(kh)
		if want := c.name + " " + f[0] + " " + f[1] + "\n"; string(got) != want {
			t.Errorf("known_hosts for port %d = %q, want %q", c.port, got, want)
		}
	}

	a := e.ClientArgs("", 2022, "/x/known_hosts", "-N")
	if got := strings.Join(a, " "); !strings.HasPrefix(got, "ssh -F /dev/null -p 2022 -i "+e.ClientKey) ||
		!strings.Contains(got, "UserKnownHostsFile=/x/known_hosts") || !strings.HasSuffix(got, " -N") {
		t.Errorf("ClientArgs = %q", got)
	}
}
