package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/server"
	"github.com/cachetun/cachetun/test/testenv"
)

// sshTestUserCert makes a key and a user certificate for it, signed by ca
// with ssh-keygen, next to it as PATH-cert.pub (where both the client and
// OpenSSH pick it up).
func sshTestUserCert(t testing.TB, ca key, id, principals, validity string) key {
	t.Helper()
	k := sshTestNewKey(t, "ed25519", id)
	sshTestKeygen(t, "-q", "-s", ca.Path, "-I", id, "-n", principals, "-V", validity, k.Path+".pub")
	return k
}

// TestSSH_UserCertificates: OpenSSH user certificates from a
// cert-authority line work on every transport; an expired one, one whose
// principals the CA line does not allow, one for another target and one
// from an untrusted CA are refused with errors that say so.
func TestSSH_UserCertificates(t *testing.T) {
	r := testenv.StartRedis(t)
	ca := sshTestNewKey(t, "ed25519", "users-ca")
	openCA := sshTestNewKey(t, "ed25519", "open-ca")
	strangerCA := sshTestNewKey(t, "ed25519", "stranger-ca")
	valid := sshTestUserCert(t, ca, "alice", "cache", "-5m:+1h")
	expired := sshTestUserCert(t, ca, "bob", "cache", "20200101:20200102")
	wrongPrincipal := sshTestUserCert(t, ca, "carol", "other", "-5m:+1h")
	otherTarget := sshTestUserCert(t, openCA, "dave", "other", "-5m:+1h")
	untrusted := sshTestUserCert(t, strangerCA, "eve", "cache", "-5m:+1h")

	targets := redisTarget(r)
	targets["other"] = &server.Target{Type: server.TypeTCP, Nodes: []string{"127.0.0.1:9"}}
	g := startGateway(t, targets, []string{
		`cert-authority,targets="cache" ` + ca.Line,
		`cert-authority ` + openCA.Line,
	})

	forEachTransport(t, func(t *testing.T, transport string) {
		c := mustConnect(t, g, transport, "cache", valid)
		if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
			t.Fatalf("PING with a certificate: %q", got)
		}
		g.Log.waitLog(t, "key_comment=alice") // 53d31d5 split the key into key_fp and key_comment
		n := r.TotalConnections(t)

		for _, tc := range []struct {
			name string
			key  key
			want []string
		}{
			{"expired", expired, []string{"certificate", `"bob"`, "expired"}},
			{"principal outside targets=", wrongPrincipal, []string{"principals", "other", "targets="}},
			{"principal for another target", otherTarget, []string{`may not use target "cache"`, "other"}},
			{"untrusted CA", untrusted, []string{"certificate", `"eve"`, "not"}},
		} {
			t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
				_, err := startConnect(t, g, transport, "cache", tc.key)
				if err == nil {
					t.Fatal("connect succeeded, want a refusal")
				}
				msg := errText(err)
				for _, w := range tc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("error %q does not mention %q", msg, w)
					}
				}
			})
		}
		if after := r.TotalConnections(t); after != n {
			t.Fatalf("redis saw %d connections during refusals", after-n)
		}
	})

	t.Run("openssh", func(t *testing.T) {
		kh := g.KnownHosts(t)
		p := sshTestStartOpenSSH(t, valid.Path, kh, g.SSHAddr, "cache:6379")
		select {
		case <-p.exited:
			t.Fatalf("ssh with a valid certificate exited: %v\n%s", p.err, p.Stderr())
		default:
		}
		if got := redisCLI(t, p.Locals[0], "PING"); got != "PONG" {
			t.Fatalf("PING through ssh -L with a certificate: %q", got)
		}
		n := r.TotalConnections(t)
		p = sshTestStartOpenSSH(t, expired.Path, kh, g.SSHAddr, "cache:6379")
		if err := p.waitExit(t); err == nil {
			t.Fatal("ssh with an expired certificate exited 0")
		}
		// The gateway's banner reaches the OpenSSH user.
		if s := p.Stderr(); !strings.Contains(s, "Permission denied") || !strings.Contains(s, "expired") {
			t.Fatalf("ssh stderr lacks Permission denied and the reason:\n%s", s)
		}
		if after := r.TotalConnections(t); after != n {
			t.Fatalf("redis saw %d connections for a refused certificate", after-n)
		}
	})
}

// sshTestHostCert returns a gateway option that signs the gateway's host
// key with ca for principal (ssh-keygen -h) and configures host_cert.
func sshTestHostCert(t testing.TB, ca key, principal, validity string) gatewayOpt {
	return func(cfg *server.Config) {
		sshTestKeygen(t, "-q", "-s", ca.Path, "-h", "-I", "gateway", "-n", principal, "-V", validity, cfg.HostKey+".pub")
		cfg.HostCert = cfg.HostKey + "-cert.pub"
	}
}

// sshTestCAKnownHosts writes a known_hosts file that trusts ca for the
// gateway's ports and pins nothing. knownhosts matches ports exactly, so
// each port gets its pattern.
func sshTestCAKnownHosts(t testing.TB, g *gateway, ca key) string {
	t.Helper()
	var pats []string
	for _, a := range []string{g.Addr, g.SSHAddr} {
		host, port, _ := net.SplitHostPort(a)
		pats = append(pats, fmt.Sprintf("[%s]:%s", host, port))
	}
	path := filepath.Join(t.TempDir(), "known_hosts")
	line := "@cert-authority " + strings.Join(pats, ",") + " " + ca.Line + "\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSSH_HostCertificates: a gateway with an OpenSSH host certificate is
// trusted through a @cert-authority line alone, on every transport and by
// OpenSSH; a plain pin still works; a certificate for another name or out
// of its validity window is refused.
func TestSSH_HostCertificates(t *testing.T) {
	r := testenv.StartRedis(t)
	hostCA := sshTestNewKey(t, "ed25519", "host-ca")
	k := newKey(t, "user")

	t.Run("valid", func(t *testing.T) {
		g := startGateway(t, redisTarget(r), []string{k.Line}, sshTestHostCert(t, hostCA, "127.0.0.1", "-5m:+1h"))
		caOnly := sshTestCAKnownHosts(t, g, hostCA)
		forEachTransport(t, func(t *testing.T, transport string) {
			for name, kh := range map[string]string{"ca": caOnly, "pinned": g.KnownHosts(t)} {
				c, err := startConnect(t, g, transport, "cache", k, func(o *client.Options) { o.KnownHosts = kh })
				if err != nil {
					t.Fatalf("connect with %s known_hosts: %v", name, errText(err))
				}
				if got := redisCLI(t, c.Local(t, r.Addr), "PING"); got != "PONG" {
					t.Fatalf("PING: %q", got)
				}
			}
		})
		t.Run("openssh", func(t *testing.T) {
			p := sshTestStartOpenSSH(t, k.Path, caOnly, g.SSHAddr, "cache:6379")
			select {
			case <-p.exited:
				t.Fatalf("ssh trusting the host CA exited: %v\n%s", p.err, p.Stderr())
			default:
			}
			if got := redisCLI(t, p.Locals[0], "PING"); got != "PONG" {
				t.Fatalf("PING through ssh -L: %q", got)
			}
			if !strings.Contains(p.Stderr(), "Server host certificate") {
				t.Errorf("OpenSSH did not verify a host certificate:\n%s", p.Stderr())
			}
		})
	})

	for _, tc := range []struct {
		name, principal, validity string
	}{
		{"other name", "gw.example.com", "-5m:+1h"},
		{"expired", "127.0.0.1", "20200101:20200102"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			g := startGateway(t, redisTarget(r), []string{k.Line}, sshTestHostCert(t, hostCA, tc.principal, tc.validity))
			caOnly := sshTestCAKnownHosts(t, g, hostCA)
			forEachTransport(t, func(t *testing.T, transport string) {
				_, err := startConnect(t, g, transport, "cache", k, func(o *client.Options) { o.KnownHosts = caOnly })
				if err == nil {
					t.Fatal("connect succeeded, want the host certificate refused")
				}
				if msg := errText(err); !strings.Contains(msg, "host certificate") {
					t.Errorf("error %q does not mention the host certificate", msg)
				}
			})
			p := sshTestStartOpenSSH(t, k.Path, caOnly, g.SSHAddr, "cache:6379")
			if err := p.waitExit(t); err == nil {
				t.Fatal("OpenSSH accepted the host certificate")
			}
			if !strings.Contains(p.Stderr(), "Host key verification failed") {
				t.Fatalf("OpenSSH stderr:\n%s", p.Stderr())
			}
		})
	}
}
