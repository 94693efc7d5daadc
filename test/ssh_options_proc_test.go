package test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cachetun/cachetun/test/testenv"
)

// runConnectToExit runs the built `cachetun connect TARGET` with key k
// over transport and waits, at most 20 s, for it to exit; it returns the
// exit code and stderr.
func runConnectToExit(t *testing.T, g *gatewayProc, transport, target string, k key) (int, string) {
	t.Helper()
	cmd := exec.Command(cachetunBinary(t), "connect", target, "--server", g.ServerAddr(transport), "--transport", transport,
		"-i", k.Path, "--known-hosts", g.KnownHosts(t), "--local-port", "0")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "SSH_AUTH_SOCK=", "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("cachetun connect: %v", err)
		}
		return cmd.ProcessState.ExitCode(), stderr.String()
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("cachetun connect with a refused key still running after 20 s (it got in?): %s", stderr.String())
		return 0, ""
	}
}

// TestGatewayProc_BastionLineAndClearedCert (issue 10, finding 6, as the
// issue words it, against the real binaries on both ends): the bastion
// line restrict,no-port-forwarding,permitopen="127.0.0.1:1" (without
// command=, which fails the load: TestGatewayProc_OptionsFailClosed) and a
// certificate from ssh-keygen -O clear are refused by a gateway process,
// to the real `cachetun connect` on quic, tls and ssh (exit 1, the reason
// printed) and to ssh -N -L (Permission denied, the reason in its
// stderr); the cache sees no connection. A certificate of the same CA
// with permit-port-forwarding gets through, so the refusals are the
// options' doing.
func TestGatewayProc_BastionLineAndClearedCert(t *testing.T) {
	r := testenv.StartRedis(t)
	bastion := sshTestNewKey(t, "ed25519", "bastion")
	ca := sshTestNewKey(t, "ed25519", "users-ca")
	cleared := sshTestCertWith(t, ca, "cleared", "cache", "clear")
	normal := sshTestCertWith(t, ca, "normal", "cache")
	g := startGatewayProc(t, gatewayProcOpts{
		Targets: map[string]string{"cache": fmt.Sprintf("{type: redis, nodes: [%q]}", r.Addr)},
		Authorized: []string{
			`restrict,no-port-forwarding,permitopen="127.0.0.1:1" ` + bastion.Line,
			"cert-authority " + ca.Line,
		},
	})
	refusals := []struct {
		name string
		k    key
		want string
	}{
		{"bastion line", bastion, "is restricted (no-port-forwarding) on line 1"},
		{"-O clear certificate", cleared, `certificate "cleared"`},
	}
	n := r.TotalConnections(t)
	for _, tr := range []string{"quic", "tls", "ssh"} {
		for _, tc := range refusals {
			code, stderr := runConnectToExit(t, g, tr, "cache", tc.k)
			if code != 1 || !strings.Contains(stderr, tc.want) {
				t.Errorf("%s over %s: exit %d, stderr %q; want exit 1 naming %q", tc.name, tr, code, stderr, tc.want)
			}
			if tc.k.Path == cleared.Path {
				if !strings.Contains(stderr, "permit-port-forwarding") {
					t.Errorf("%s over %s: stderr %q does not name the missing extension", tc.name, tr, stderr)
				}
				// The certificate's CA can fix it, not the key's line.
				if tr != "ssh" && (!strings.Contains(stderr, "hint: ask your certificate authority") || strings.Contains(stderr, "the key's line")) {
					t.Errorf("%s over %s: the hint does not send the user to the CA: %q", tc.name, tr, stderr)
				}
			}
		}
	}
	kh := g.KnownHosts(t)
	for _, tc := range refusals {
		p := sshTestStartOpenSSH(t, tc.k.Path, kh, g.SSHAddr, "cache:6379")
		if err := p.waitExit(t); err == nil {
			t.Fatalf("ssh -L with the %s exited 0", tc.name)
		}
		if s := p.Stderr(); !strings.Contains(s, "Permission denied") || !strings.Contains(s, tc.want) {
			t.Errorf("ssh -L with the %s: stderr lacks Permission denied and %q:\n%s", tc.name, tc.want, s)
		}
	}
	if after := r.TotalConnections(t); after != n {
		t.Fatalf("redis saw %d connections for refused keys", after-n)
	}
	g.WaitLog(t, "lacks the permit-port-forwarding extension", 5*time.Second)
	g.WaitLog(t, "is restricted (no-port-forwarding) on line 1", 5*time.Second)
	// The CA line itself works: a certificate with the extension gets in.
	p := sshTestStartOpenSSH(t, normal.Path, kh, g.SSHAddr, "cache:6379")
	if got := redisCLI(t, p.Locals[0], "PING"); got != "PONG" {
		t.Fatalf("PING through ssh -L with a certificate that has permit-port-forwarding: %q\n%s", got, p.Stderr())
	}
}
