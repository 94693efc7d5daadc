package auth

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// fixedSigner returns a deterministic ed25519 signer, so fuzz seeds are
// stable across runs.
func fixedSigner(t testing.TB, b byte) ssh.Signer {
	t.Helper()
	s, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func FuzzParseAuthorizedKeys(f *testing.F) {
	key := pubLine(fixedSigner(f, 1).PublicKey())
	ca := fixedSigner(f, 2)
	cert := signCert(f, ca, fixedSigner(f, 3).PublicKey(), ssh.UserCert, testNow, []string{"prod"})
	seeds := map[string]string{
		"empty":              "",
		"plain":              key + " alice\n",
		"no newline":         key,
		"crlf":               key + " a\r\n" + key + " b\r\n",
		"comments":           "# c\n\n   \n\t#x\n" + key,
		"all options":        `targets="a,b",from="10.0.0.0/8,!10.0.0.5,192.0.2.*",expiry-time="20300101",no-pty,restrict ` + key,
		"cert-authority":     `cert-authority,targets="prod" ` + pubLine(ca.PublicKey()),
		"escaped quote":      `command="echo \"x\"" ` + key,
		"quoted comma":       `permitopen="a,b",targets="x" ` + key,
		"unterminated quote": `from="10.0.0.1 ` + key,
		"unknown option":     `foo ` + key,
		"empty value":        `targets="" ` + key,
		"bad cidr":           `from="10.0.0.1/8" ` + key,
		"bad expiry":         `expiry-time="20261399" ` + key,
		"type mismatch":      "ssh-rsa " + strings.Fields(key)[1],
		"certificate":        pubLine(cert),
		"only options":       `no-pty`,
		"many stars":         `from="*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?*?1" ` + key,
		"ipv6":               `from="2001:db8::/32,::1" ` + key,
		"nul bytes":          "\x00\x00" + key,
		"long line":          strings.Repeat("a", 70000) + " " + key,
		"case":               `TARGETS="x",Cert-Authority ` + key,
		// OpenSSH forwarding options and their combinations.
		"finding 6":                `restrict,no-port-forwarding,permitopen="127.0.0.1:1",command="/bin/false" ` + key,
		"restrict":                 `restrict ` + key,
		"restrict port-forwarding": `restrict,port-forwarding,permitopen="cache:*" ` + key,
		"port-forwarding restrict": `port-forwarding,restrict ` + key,
		"no-port-forwarding":       `NO-PORT-FORWARDING,port-forwarding,no-port-forwarding ` + key,
		"moot flags":               `no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,touch-required ` + key,
		"permitopen list":          `permitopen="0.cache:6379,cache:*,10.0.0.1:6379,[2001:db8::1]:6379,*:11211" ` + key,
		"permitopen repeated":      `permitopen="a:1",permitopen="b:2",permitopen="*:*" ` + key,
		"permitopen quoted comma":  `permitopen="a:1,b:2",targets="a,b" ` + key,
		"permitopen escaped quote": `permitopen="a\"b:1" ` + key,
		"permitopen empty entry":   `permitopen="a:1,,b:2" ` + key,
		"permitopen bare v6":       `permitopen="::1:6379" ` + key,
		"permitopen zone":          `permitopen="[fe80::1%eth0]:6379" ` + key,
		"permitopen port 0":        `permitopen="a:0" ` + key,
		"permitopen no port":       `permitopen="a" ` + key,
		"permitopen mapped":        `permitopen="[::ffff:10.0.0.1]:1" ` + key,
		"ca restrict":              `cert-authority,restrict,port-forwarding,permitopen="prod:*" ` + pubLine(ca.PublicKey()),
		"environment":              `environment="A=B" ` + key,
		"tunnel":                   `tunnel="0" ` + key,
		"permitlisten":             `permitlisten="localhost:8080" ` + key,
		"pty":                      `restrict,pty ` + key,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	stranger := fixedSigner(f, 9).PublicKey()
	remotes := []net.IP{nil, net.ParseIP("10.0.0.5"), net.ParseIP("192.0.2.1"), net.ParseIP("2001:db8::1")}

	f.Fuzz(func(t *testing.T, data []byte) {
		ak, err := ParseAuthorizedKeys(data, "fuzz")
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Name != "fuzz" || !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not a *ParseError with a line number", err)
			}
			return
		}
		if _, err := ak.Authorize(stranger, remotes[1], testNow); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("a key not in the file: err = %v, want ErrUnknownKey", err)
		}
		for _, e := range ak.keys {
			for _, ip := range remotes {
				id, err := ak.Authorize(e.key, ip, testNow)
				if err != nil {
					if !errors.Is(err, ErrUnknownKey) && !errors.Is(err, ErrKeyExpired) && !errors.Is(err, ErrSourceNotAllowed) && !errors.Is(err, ErrKeyRestricted) {
						t.Fatalf("Authorize: unexpected error kind: %v", err)
					}
					continue
				}
				if e.denied != "" {
					t.Fatalf("a line with %s logged in", e.denied)
				}
				if (id.PermitOpen == nil) != (e.permitOpen == nil) {
					t.Fatalf("PermitOpen = %v, line has %v", id.PermitOpen, e.permitOpen)
				}
				for _, p := range id.PermitOpen {
					if p.Host == "" || p.Port == "" {
						t.Fatalf("empty permitopen entry %+v", p)
					}
					if p.Port != "*" && !p.Matches(p.Host, -1, net.JoinHostPort("192.0.2.1", p.Port)) {
						t.Fatalf("entry %v does not match its own target name", p)
					}
				}
				if id.PermitOpen != nil && id.MayOpen("no-such-target", -1, "192.0.2.99:1") == nil && !slices.ContainsFunc(id.PermitOpen, func(p Permit) bool {
					return (p.Host == "*" || p.Host == "192.0.2.99") && (p.Port == "*" || p.Port == "1")
				}) {
					t.Fatalf("permitopen=%v lets an unrelated node through", id.PermitOpen)
				}
				if e.ca {
					t.Fatalf("a cert-authority key logged in by itself")
				}
				if id.Fingerprint != Fingerprint(e.key) {
					t.Fatalf("Fingerprint = %s, want %s", id.Fingerprint, Fingerprint(e.key))
				}
				if id.Targets != nil && len(id.Targets) == 0 {
					t.Fatalf("identity with an empty, non-nil target list")
				}
				if strings.ContainsAny(id.String(), "\n\r") {
					t.Fatalf("Identity.String() = %q spans lines", id.String())
				}
			}
		}
	})
}

func FuzzKnownHosts(f *testing.F) {
	key := fixedSigner(f, 1).PublicKey()
	ca := fixedSigner(f, 2).PublicKey()
	hashed := knownhosts.HashHostname(knownhosts.Normalize("gw:4433"))
	seeds := []struct{ data, hostport string }{
		{"", "gw:4433"},
		{"[gw]:4433 " + pubLine(key) + "\n", "gw:4433"},
		{"gw " + pubLine(key) + "\n", "gw:22"},
		{"[gw]:4433 " + pubLine(key), "gw:4433"}, // no trailing newline
		{"# comment only", "gw:4433"},
		{hashed + " " + pubLine(key) + "\n", "gw:4433"},
		{"!gw,* " + pubLine(key) + "\n", "gw:22"},
		{"[*.example.com]:4433 " + pubLine(key) + "\n", "a.example.com:4433"},
		{"@cert-authority [gw]:4433 " + pubLine(ca) + "\n", "gw:4433"},
		{"@revoked * " + pubLine(key) + "\n", "gw:4433"},
		{"@cert-authority @revoked gw " + pubLine(key) + "\n", "gw:4433"},
		{"@unknown gw " + pubLine(key) + "\n", "gw:4433"},
		{"gw ssh-ed25519 AAAA!!!!\n", "gw:4433"},
		{"gw ssh-rsa " + strings.Fields(pubLine(key))[1] + "\n", "gw:22"},
		{"|1|bad|hash " + pubLine(key) + "\n", "gw:22"},
		{"|2|" + strings.TrimPrefix(hashed, "|1|") + " " + pubLine(key) + "\n", "gw:4433"},
		{"[gw:4433 " + pubLine(key) + "\n", "gw:4433"},
		{"! " + pubLine(key) + "\n", "gw:22"},
		{"[::1]:4433 " + pubLine(key) + "\n", "[::1]:4433"},
		{"gw " + pubLine(key) + "\r\n", "gw:22"},
		{"", "a,b:22"},
		{"", "*:22"},
		{"", "gw\n@revoked:22"},
		{"", "[::1%eth0]:4433"},
		{"", "gw"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.data), s.hostport)
	}
	fresh := fixedSigner(f, 7).PublicKey()
	other := fixedSigner(f, 8).PublicKey()

	f.Fuzz(func(t *testing.T, data []byte, hostport string) {
		// knownhosts matches '*' recursively; keep patterns tractable.
		if bytes.Count(data, []byte("*")) > 8 || len(hostport) > 256 {
			t.Skip()
		}
		dir := t.TempDir()
		path := filepath.Join(dir, "known_hosts")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := &HostKeyChecker{Path: path}
		// The fuzzer cannot know fresh's key: it is never accepted.
		if err := c.Check(hostport, nil, fresh); err == nil {
			t.Fatalf("a key not in known_hosts was accepted for %q", hostport)
		}
		c.HostKeyAlgorithms(hostport)

		accept := &HostKeyChecker{Path: path, AcceptNew: true}
		err := accept.Check(hostport, nil, fresh)
		if err != nil {
			if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
				t.Fatalf("known_hosts changed although Check failed: %v", err)
			}
			return
		}
		// Pinned: a second checker accepts the key, another key is a
		// mismatch, and only one line was added.
		if err := c.Check(hostport, nil, fresh); err != nil {
			t.Fatalf("after accept-new, %q: %v", hostport, err)
		}
		if err := accept.Check(hostport, nil, other); !errors.Is(err, ErrHostKeyMismatch) {
			t.Fatalf("after accept-new, another key for %q: err = %v, want ErrHostKeyMismatch", hostport, err)
		}
		after, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		added := strings.TrimPrefix(string(after[len(data):]), "\n")
		if strings.Count(added, "\n") != 1 || !strings.HasSuffix(added, pubLine(fresh)+"\n") {
			t.Fatalf("accept-new appended %q, want one line", added)
		}
	})
}
