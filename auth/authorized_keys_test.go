package auth

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

const akName = "/etc/cachetun/authorized_keys"

func mustParseAK(t testing.TB, data string) *AuthorizedKeys {
	t.Helper()
	ak, err := ParseAuthorizedKeys([]byte(data), akName)
	if err != nil {
		t.Fatalf("ParseAuthorizedKeys: %v", err)
	}
	return ak
}

func TestParseAuthorizedKeys_MalformedLines(t *testing.T) {
	key := pubLine(newSigner(t).PublicKey())
	cert := signCert(t, newSigner(t), newSigner(t).PublicKey(), ssh.UserCert, testNow, []string{"x"})
	edBlob := strings.Fields(key)[1]
	for _, tc := range []struct {
		name, line, wantText string
	}{
		{"garbage", "garbage", "cannot parse key line"},
		{"bad base64", "ssh-ed25519 AAAA!!!!", "cannot parse key line"},
		{"type mismatch", "ssh-rsa " + edBlob, "cannot parse key line"},
		{"options only", `targets="a"`, "cannot parse key line"},
		{"unterminated quote", `from="10.0.0.1 ` + key, "cannot parse key line"},
		{"unknown option", `foo="bar" ` + key, `unknown option "foo"`},
		{"typo in targets", `target="prod" ` + key, `unknown option "target"`},
		{"unquoted value", `targets=prod ` + key, "double quotes"},
		{"empty targets", `targets="" ` + key, "empty target"},
		{"empty target in list", `targets="a,,b" ` + key, "empty target"},
		{"targets without value", `targets ` + key, "needs a value"},
		{"duplicate targets", `targets="a",targets="b" ` + key, "appears twice"},
		{"duplicate from", `from="10.0.0.1",from="10.0.0.2" ` + key, "appears twice"},
		{"from host name", `from="gw.example.com" ` + key, "not an IP address"},
		{"from host bits", `from="10.0.0.1/8" ` + key, "host bits"},
		{"from bad prefix", `from="10.0.0.0/33" ` + key, "invalid CIDR"},
		{"from empty", `from="" ` + key, "empty address"},
		{"from empty entry", `from="10.0.0.1,,10.0.0.2" ` + key, "empty address"},
		{"from bare negation", `from="!" ` + key, "empty address"},
		{"expiry short", `expiry-time="2026" ` + key, "YYYYMMDD"},
		{"expiry ten digits", `expiry-time="2026010112" ` + key, "YYYYMMDD"},
		{"expiry letters", `expiry-time="2026O101" ` + key, "YYYYMMDD"},
		{"expiry bad month", `expiry-time="20261301" ` + key, "not a valid date"},
		{"expiry bad hour", `expiry-time="202601012500" ` + key, "not a valid date"},
		{"cert-authority with value", `cert-authority="yes" ` + key, "takes no value"},
		{"flag with value", `no-pty="1" ` + key, "takes no value"},
		{"permitopen without value", `permitopen ` + key, "needs a value"},
		{"principals", `cert-authority,principals="a" ` + key, "option principals= is not supported"},
		{"verify-required", `verify-required ` + key, "option verify-required is not supported"},
		{"certificate line", pubLine(cert), "certificates do not belong"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := "# header\n\n" + pubLine(newSigner(t).PublicKey()) + " ok\n" + tc.line + "\n"
			_, err := ParseAuthorizedKeys([]byte(data), akName)
			if err == nil {
				t.Fatalf("line %q: want error", tc.line)
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line != 4 || pe.Name != akName {
				t.Fatalf("err = %#v, want *ParseError for %s line 4", err, akName)
			}
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("errors.Is(err, ErrSyntax) = false")
			}
			if !strings.HasPrefix(err.Error(), akName+":4: ") {
				t.Errorf("error %q does not start with %q", err, akName+":4: ")
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not contain %q", err, tc.wantText)
			}
		})
	}
}

func TestParseAuthorizedKeys_Accepts(t *testing.T) {
	k1, k2, k3 := newSigner(t).PublicKey(), newSigner(t).PublicKey(), newRSASigner(t).PublicKey()
	data := strings.Join([]string{
		"# cachetun authorized_keys",
		"",
		"   ",
		"\t# indented comment",
		pubLine(k1) + " alice@laptop with spaces\r",
		`no-pty,no-X11-forwarding,no-agent-forwarding,no-port-forwarding,no-user-rc,restrict,port-forwarding,` +
			`permitopen="10.0.0.1:6379",touch-required ` + pubLine(k2),
		`  TARGETS="a",From="10.0.0.0/8",Expiry-Time="20300101" ` + pubLine(k3) + " rsa",
		`targets="say \"hi\", there" ` + pubLine(newECDSASigner(t).PublicKey()),
	}, "\n")
	ak := mustParseAK(t, data)
	if got, want := ak.Len(), 4; got != want {
		t.Fatalf("Len() = %d, want %d", got, want)
	}
	if got := ak.Name(); got != akName {
		t.Errorf("Name() = %q, want %q", got, akName)
	}
	id, err := ak.Authorize(k1, net.ParseIP("192.0.2.1"), testNow)
	if err != nil {
		t.Fatal(err)
	}
	if id.Comment != "alice@laptop with spaces" {
		t.Errorf("Comment = %q, want %q", id.Comment, "alice@laptop with spaces")
	}
	id, err = ak.Authorize(k3, net.ParseIP("10.9.9.9"), testNow)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(id.Targets, []string{"a"}) {
		t.Errorf("Targets = %q, want [a]", id.Targets)
	}

	empty := mustParseAK(t, "")
	if empty.Len() != 0 {
		t.Errorf("empty file: Len() = %d", empty.Len())
	}
}

func TestAuthorizedKeys_AuthorizeUnknownKey(t *testing.T) {
	known, stranger := newSigner(t).PublicKey(), newSigner(t).PublicKey()
	ak := mustParseAK(t, pubLine(known)+"\n")
	_, err := ak.Authorize(stranger, net.ParseIP("192.0.2.1"), testNow)
	if !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("err = %v, want ErrUnknownKey", err)
	}
	want := "key " + Fingerprint(stranger) + " is not in " + akName + ": add its .pub line there"
	if got := err.Error(); got != want {
		t.Errorf("error = %q, want %q", got, want)
	}

	var nilAK *AuthorizedKeys
	if _, err := nilAK.Authorize(known, nil, testNow); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("nil AuthorizedKeys: err = %v, want ErrUnknownKey", err)
	}
	if _, err := ak.Authorize(nil, nil, testNow); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("nil key: err = %v, want ErrUnknownKey", err)
	}
}

func TestAuthorizedKeys_AuthorizeTargets(t *testing.T) {
	all, some, star := newSigner(t).PublicKey(), newSigner(t).PublicKey(), newSigner(t).PublicKey()
	ak := mustParseAK(t, pubLine(all)+" all\n"+
		`targets=" prod-redis , sessions,prod-redis" `+pubLine(some)+" some\n"+
		`targets="*" `+pubLine(star)+" star\n")
	for _, tc := range []struct {
		key         ssh.PublicKey
		wantTargets []string
		allowed     []string
		denied      []string
	}{
		{all, nil, []string{"prod-redis", "anything"}, nil},
		{some, []string{"prod-redis", "sessions"}, []string{"prod-redis", "sessions"}, []string{"staging", "", "*"}},
		{star, nil, []string{"x"}, nil},
	} {
		id, err := ak.Authorize(tc.key, net.ParseIP("192.0.2.1"), testNow)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(id.Targets, tc.wantTargets) || (id.Targets == nil) != (tc.wantTargets == nil) {
			t.Errorf("%s: Targets = %#v, want %#v", id.Comment, id.Targets, tc.wantTargets)
		}
		for _, tg := range tc.allowed {
			if !id.Allows(tg) {
				t.Errorf("%s: Allows(%q) = false, want true", id.Comment, tg)
			}
		}
		for _, tg := range tc.denied {
			if id.Allows(tg) {
				t.Errorf("%s: Allows(%q) = true, want false", id.Comment, tg)
			}
		}
		if id.Fingerprint != Fingerprint(tc.key) || id.Cert != nil || string(id.Key.Marshal()) != string(tc.key.Marshal()) {
			t.Errorf("%s: identity = %+v", id.Comment, id)
		}
	}
	var nilID *Identity
	if nilID.Allows("x") {
		t.Error("nil Identity allows a target")
	}
}

func TestAuthorizedKeys_AuthorizeExpiry(t *testing.T) {
	k := newSigner(t).PublicKey()
	for _, tc := range []struct {
		value   string
		expires time.Time
	}{
		{"20260601", time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)},
		{"202606011200", time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)},
		{"20260601120030", time.Date(2026, 6, 1, 12, 0, 30, 0, time.UTC)},
		{"20260601120030Z", time.Date(2026, 6, 1, 12, 0, 30, 0, time.UTC)},
	} {
		ak := mustParseAK(t, `expiry-time="`+tc.value+`" `+pubLine(k)+"\n")
		// Valid up to the instant before, invalid at and after it.
		id, err := ak.Authorize(k, nil, tc.expires.Add(-time.Second))
		if err != nil {
			t.Errorf("%s: a second before expiry: %v", tc.value, err)
		} else if !id.Expires.Equal(tc.expires) {
			t.Errorf("%s: Expires = %v, want %v", tc.value, id.Expires, tc.expires)
		}
		for _, at := range []time.Time{tc.expires, tc.expires.Add(time.Hour)} {
			_, err := ak.Authorize(k, nil, at)
			if !errors.Is(err, ErrKeyExpired) {
				t.Errorf("%s at %v: err = %v, want ErrKeyExpired", tc.value, at, err)
				continue
			}
			if !strings.Contains(err.Error(), "line 1 of "+akName) {
				t.Errorf("error %q does not name the line and file", err)
			}
		}
	}
	// No expiry-time: Expires is zero.
	ak := mustParseAK(t, pubLine(k)+"\n")
	id, err := ak.Authorize(k, nil, testNow)
	if err != nil || !id.Expires.IsZero() {
		t.Errorf("no expiry: id = %+v, err = %v", id, err)
	}
}

func TestAuthorizedKeys_AuthorizeFrom(t *testing.T) {
	k := newSigner(t).PublicKey()
	for _, tc := range []struct {
		from  string
		ip    string
		allow bool
	}{
		{"10.0.0.0/8", "10.1.2.3", true},
		{"10.0.0.0/8", "11.0.0.1", false},
		{"192.0.2.7", "192.0.2.7", true},
		{"192.0.2.7", "192.0.2.8", false},
		{"192.0.2.7/32", "192.0.2.7", true},
		{"192.0.2.*", "192.0.2.200", true},
		{"192.0.2.*", "192.0.3.1", false},
		{"192.0.2.?", "192.0.2.5", true},
		{"192.0.2.?", "192.0.2.50", false},
		{"*", "203.0.113.9", true},
		{"10.0.0.0/8,!10.0.0.5", "10.0.0.5", false},
		{"10.0.0.0/8,!10.0.0.5", "10.0.0.6", true},
		{"!10.0.0.5,10.0.0.0/8", "10.0.0.5", false},
		{"!10.0.0.5", "10.0.0.6", false}, // negation alone allows nothing
		{"!192.0.2.0/24,*", "192.0.2.9", false},
		{"!192.0.2.0/24,*", "198.51.100.9", true},
		{"10.0.0.1, 10.0.0.2", "10.0.0.2", true},
		{"2001:db8::/32", "2001:db8::1", true},
		{"2001:db8::/32", "2001:db9::1", false},
		{"::1", "::1", true},
		{"::1", "127.0.0.1", false},
		{"2001:db8::*", "2001:db8::42", true},
		{"::ffff:10.0.0.1", "10.0.0.1", true}, // IPv4-mapped address = IPv4
	} {
		ak := mustParseAK(t, `from="`+tc.from+`" `+pubLine(k)+"\n")
		ip := net.ParseIP(tc.ip)
		_, err := ak.Authorize(k, ip, testNow)
		if tc.allow && err != nil {
			t.Errorf("from=%q, remote %s: err = %v, want allowed", tc.from, tc.ip, err)
		}
		if !tc.allow && !errors.Is(err, ErrSourceNotAllowed) {
			t.Errorf("from=%q, remote %s: err = %v, want ErrSourceNotAllowed", tc.from, tc.ip, err)
		}
		// The 4-byte form of IPv4 addresses behaves the same.
		if ip4 := ip.To4(); ip4 != nil {
			if _, err4 := ak.Authorize(k, ip4, testNow); (err4 == nil) != (err == nil) {
				t.Errorf("from=%q: 4-byte %s: err = %v, 16-byte err = %v", tc.from, tc.ip, err4, err)
			}
		}
	}
	// Unknown remote: any from= fails, no from= passes.
	ak := mustParseAK(t, `from="*" `+pubLine(k)+"\n")
	if _, err := ak.Authorize(k, nil, testNow); !errors.Is(err, ErrSourceNotAllowed) {
		t.Errorf("nil remote with from=: err = %v, want ErrSourceNotAllowed", err)
	}
	ak = mustParseAK(t, pubLine(k)+"\n")
	if _, err := ak.Authorize(k, nil, testNow); err != nil {
		t.Errorf("nil remote without from=: %v", err)
	}
}

func TestAuthorizedKeys_AuthorizeFirstPassingLine(t *testing.T) {
	k := newSigner(t).PublicKey()
	ak := mustParseAK(t, `from="10.0.0.0/8",targets="internal" `+pubLine(k)+" office\n"+
		`expiry-time="20200101",targets="old" `+pubLine(k)+" old\n"+
		`targets="public" `+pubLine(k)+" anywhere\n")
	id, err := ak.Authorize(k, net.ParseIP("10.1.1.1"), testNow)
	if err != nil || id.Comment != "office" {
		t.Errorf("from 10.1.1.1: id = %v, err = %v, want office", id, err)
	}
	id, err = ak.Authorize(k, net.ParseIP("192.0.2.1"), testNow)
	if err != nil || id.Comment != "anywhere" || !slices.Equal(id.Targets, []string{"public"}) {
		t.Errorf("from 192.0.2.1: id = %v, err = %v, want anywhere", id, err)
	}
	// Every line fails: the first line's reason is reported.
	ak = mustParseAK(t, `from="10.0.0.0/8" `+pubLine(k)+"\n"+`expiry-time="20200101" `+pubLine(k)+"\n")
	if _, err := ak.Authorize(k, net.ParseIP("192.0.2.1"), testNow); !errors.Is(err, ErrSourceNotAllowed) {
		t.Errorf("all lines fail: err = %v, want ErrSourceNotAllowed", err)
	}
}

func TestAuthorizedKeys_AuthorizeCAKeyCannotLogIn(t *testing.T) {
	ca := newSigner(t)
	ak := mustParseAK(t, "cert-authority "+pubLine(ca.PublicKey())+"\n")
	_, err := ak.Authorize(ca.PublicKey(), nil, testNow)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), "cert-authority") {
		t.Errorf("err = %v, want ErrUnknownKey mentioning cert-authority", err)
	}
}

func TestIdentity_String(t *testing.T) {
	k := newSigner(t).PublicKey()
	for _, tc := range []struct {
		id   *Identity
		want string
	}{
		{&Identity{Fingerprint: Fingerprint(k), Comment: "alice@laptop"}, Fingerprint(k) + " (alice@laptop)"},
		{&Identity{Fingerprint: Fingerprint(k)}, Fingerprint(k)},
		{&Identity{Fingerprint: "SHA256:x", Comment: "evil\nINFO forged"}, `SHA256:x (evil\nINFO forged)`},
		{nil, "<nil>"},
	} {
		if got := tc.id.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
	ca := newSigner(t)
	cert := signCert(t, ca, k, ssh.UserCert, testNow, []string{"prod"})
	id := &Identity{Key: k, Cert: cert, Fingerprint: Fingerprint(k), Comment: cert.KeyId}
	want := fmt.Sprintf("%s (alice@example, cert serial 42 from CA %s)", Fingerprint(k), Fingerprint(ca.PublicKey()))
	if got := id.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestLoadAuthorizedKeys_Permissions(t *testing.T) {
	dir := t.TempDir()
	data := pubLine(newSigner(t).PublicKey()) + "\n"
	for _, mode := range []os.FileMode{0o600, 0o644, 0o444, 0o640} {
		p := writeFile(t, dir, "ak", data, mode)
		if _, err := LoadAuthorizedKeys(p); err != nil {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o664, 0o666, 0o646, 0o620, 0o602} {
		p := writeFile(t, dir, "ak", data, mode)
		_, err := LoadAuthorizedKeys(p)
		var pe *PermissionError
		if !errors.As(err, &pe) || pe.Path != p || pe.Mode != mode {
			t.Errorf("mode %04o: err = %v, want *PermissionError for %s", mode, err, p)
			continue
		}
		if !strings.Contains(err.Error(), "chmod go-w "+p) {
			t.Errorf("error %q does not say how to fix it", err)
		}
	}
	if _, err := LoadAuthorizedKeys(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want os.ErrNotExist", err)
	}
	p := writeFile(t, dir, "bad", "nonsense\n", 0o600)
	_, err := LoadAuthorizedKeys(p)
	var parseErr *ParseError
	if !errors.As(err, &parseErr) || parseErr.Name != p || parseErr.Line != 1 {
		t.Errorf("malformed file: err = %v, want *ParseError naming %s line 1", err, p)
	}
}

// Certificates signed in Go.

func TestAuthorizedKeys_AuthorizeCert(t *testing.T) {
	ca, user := newSigner(t), newSigner(t)
	ak := mustParseAK(t, "cert-authority "+pubLine(ca.PublicKey())+" users-ca\n")
	remote := net.ParseIP("192.0.2.1")

	cert := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod", "cache", "prod"})
	id, err := ak.Authorize(cert, remote, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if string(id.Key.Marshal()) != string(user.PublicKey().Marshal()) {
		t.Errorf("Key is not the certified key")
	}
	if id.Cert != cert || id.Comment != "alice@example" || id.Fingerprint != Fingerprint(user.PublicKey()) {
		t.Errorf("identity = %+v", id)
	}
	if !slices.Equal(id.Targets, []string{"prod", "cache"}) {
		t.Errorf("Targets = %q, want [prod cache]", id.Targets)
	}
	if !id.Allows("prod") || id.Allows("staging") {
		t.Errorf("Allows(prod) = %v, Allows(staging) = %v; want true, false", id.Allows("prod"), id.Allows("staging"))
	}
	if want := time.Unix(int64(cert.ValidBefore), 0); !id.Expires.Equal(want) {
		t.Errorf("Expires = %v, want %v", id.Expires, want)
	}

	star := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"*"}, func(c *ssh.Certificate) {
		c.ValidBefore = ssh.CertTimeInfinity
	})
	id, err = ak.Authorize(star, remote, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if id.Targets != nil || !id.Allows("anything") || !id.Expires.IsZero() {
		t.Errorf("principal *: Targets = %#v, Expires = %v; want nil, zero", id.Targets, id.Expires)
	}
}

func TestAuthorizedKeys_AuthorizeCertErrors(t *testing.T) {
	t.Parallel()
	ca, user, otherCA := newSigner(t), newSigner(t), newSigner(t)
	ak := mustParseAK(t, "cert-authority "+pubLine(ca.PublicKey())+"\n"+pubLine(user.PublicKey())+" plain\n")
	remote := net.ParseIP("192.0.2.1")
	rsaCA := newRSASigner(t)
	sha1CA, err := ssh.NewSignerWithAlgorithms(rsaCA.(ssh.AlgorithmSigner), []string{ssh.KeyAlgoRSA})
	if err != nil {
		t.Fatal(err)
	}
	akRSA := mustParseAK(t, "cert-authority "+pubLine(rsaCA.PublicKey())+"\n")

	tampered := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"})
	tampered.ValidPrincipals = []string{"*"}

	for _, tc := range []struct {
		name  string
		ak    *AuthorizedKeys
		cert  *ssh.Certificate
		now   time.Time
		ip    net.IP
		kinds []error
		text  string
	}{
		{"expired", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow.Add(-3*time.Hour), []string{"prod"}),
			testNow, remote, []error{ErrCertInvalid, ErrKeyExpired}, "expired"},
		{"expires at ValidBefore", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow.Add(-time.Hour), []string{"prod"}),
			testNow, remote, []error{ErrKeyExpired}, "expired"},
		{"not yet valid", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow.Add(3*time.Hour), []string{"prod"}),
			testNow, remote, []error{ErrCertInvalid}, "not valid before"},
		{"host certificate", ak, signCert(t, ca, user.PublicKey(), ssh.HostCert, testNow, []string{"prod"}),
			testNow, remote, []error{ErrCertInvalid}, "host certificate"},
		{"untrusted CA", ak, signCert(t, otherCA, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}),
			testNow, remote, []error{ErrUnknownKey}, Fingerprint(otherCA.PublicKey())},
		{"no principals", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, nil),
			testNow, remote, []error{ErrCertInvalid}, "no principals"},
		{"force-command", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}, func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"force-command": "/bin/true"}
		}), testNow, remote, []error{ErrCertInvalid}, `force-command="/bin/true"`},
		{"source-address mismatch", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}, func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"source-address": "10.0.0.0/8,198.51.100.7"}
		}), testNow, remote, []error{ErrSourceNotAllowed}, "10.0.0.0/8"},
		{"source-address unknown remote", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}, func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"source-address": "10.0.0.0/8"}
		}), testNow, nil, []error{ErrSourceNotAllowed}, "unknown address"},
		{"source-address malformed", ak, signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}, func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"source-address": "10.0.0.*"}
		}), testNow, remote, []error{ErrCertInvalid}, "source-address"},
		{"tampered", ak, tampered, testNow, remote, []error{ErrCertInvalid}, "not valid"},
		{"sha-1 CA signature", akRSA, signCert(t, sha1CA, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}),
			testNow, remote, []error{ErrCertInvalid}, "sha-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.ak.Authorize(tc.cert, tc.ip, tc.now)
			if err == nil {
				t.Fatalf("Authorize = %v, want error", id)
			}
			for _, k := range tc.kinds {
				if !errors.Is(err, k) {
					t.Errorf("err = %v, want errors.Is %v", err, k)
				}
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not contain %q", err, tc.text)
			}
		})
	}

	// source-address that matches is fine.
	ok := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"}, func(c *ssh.Certificate) {
		c.CriticalOptions = map[string]string{"source-address": "10.0.0.0/8,192.0.2.1"}
	})
	if _, err := ak.Authorize(ok, remote, testNow); err != nil {
		t.Errorf("matching source-address: %v", err)
	}

	// A certificate for a key that is listed as a plain key, signed by an
	// unknown CA, is not accepted through the plain line.
	plainCert := signCert(t, otherCA, user.PublicKey(), ssh.UserCert, testNow, []string{"*"})
	if _, err := ak.Authorize(plainCert, remote, testNow); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("cert of a plain-listed key from an unknown CA: err = %v, want ErrUnknownKey", err)
	}
}

func TestAuthorizedKeys_AuthorizeCertCAOptions(t *testing.T) {
	ca, user := newSigner(t), newSigner(t)
	caLine := pubLine(ca.PublicKey())
	remote := net.ParseIP("10.1.2.3")

	restricted := mustParseAK(t, `cert-authority,targets="prod,sessions" `+caLine+"\n")
	for _, tc := range []struct {
		principals []string
		want       []string
	}{
		{[]string{"*"}, []string{"prod", "sessions"}},
		{[]string{"prod", "dev"}, []string{"prod"}},
		{[]string{"sessions", "prod"}, []string{"sessions", "prod"}},
	} {
		cert := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, tc.principals)
		id, err := restricted.Authorize(cert, remote, testNow)
		if err != nil {
			t.Errorf("principals %q: %v", tc.principals, err)
			continue
		}
		if !slices.Equal(id.Targets, tc.want) {
			t.Errorf("principals %q: Targets = %q, want %q", tc.principals, id.Targets, tc.want)
		}
	}
	// Wrong principal: nothing left after the CA line's targets=.
	wrong := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"staging"})
	if _, err := restricted.Authorize(wrong, remote, testNow); !errors.Is(err, ErrCertInvalid) || !strings.Contains(err.Error(), "staging") {
		t.Errorf("wrong principal: err = %v, want ErrCertInvalid naming the principal", err)
	}

	// from= and expiry-time= on the CA line apply to its certificates.
	limited := mustParseAK(t, `cert-authority,from="10.0.0.0/8",expiry-time="202606011230" `+caLine+"\n")
	cert := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"prod"})
	id, err := limited.Authorize(cert, remote, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 6, 1, 12, 30, 0, 0, time.UTC); !id.Expires.Equal(want) {
		t.Errorf("Expires = %v, want the CA line's %v (earlier than the cert's)", id.Expires, want)
	}
	if _, err := limited.Authorize(cert, net.ParseIP("192.0.2.1"), testNow); !errors.Is(err, ErrSourceNotAllowed) {
		t.Errorf("CA from=: err = %v, want ErrSourceNotAllowed", err)
	}
	if _, err := limited.Authorize(cert, remote, testNow.Add(45*time.Minute)); !errors.Is(err, ErrKeyExpired) {
		t.Errorf("CA expiry-time: err = %v, want ErrKeyExpired", err)
	}
}

// Certificates signed by the real ssh-keygen.

func TestAuthorizedKeys_AuthorizeSSHKeygenCert(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, caType := range []string{"ed25519", "rsa", "ecdsa"} {
		t.Run(caType, func(t *testing.T) {
			ca := filepath.Join(dir, "ca_"+caType)
			user := filepath.Join(dir, "user_"+caType)
			sshKeygen(t, "-q", "-t", caType, "-N", "", "-C", "test-ca", "-f", ca)
			sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-f", user)
			ak := mustParseAK(t, "cert-authority "+string(mustRead(t, ca+".pub")))
			now := time.Now()
			remote := net.ParseIP("10.1.2.3")

			sign := func(args ...string) *ssh.Certificate {
				t.Helper()
				os.Remove(user + "-cert.pub")
				sshKeygen(t, append(append([]string{"-q", "-s", ca}, args...), user+".pub")...)
				c, ok := readPub(t, user+"-cert.pub").(*ssh.Certificate)
				if !ok {
					t.Fatal("ssh-keygen did not write a certificate")
				}
				return c
			}

			good := sign("-I", "alice", "-n", "prod,sessions", "-V", "-5m:+1h")
			id, err := ak.Authorize(good, remote, now)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(id.Targets, []string{"prod", "sessions"}) || id.Comment != "alice" {
				t.Errorf("identity = %v, targets %q", id, id.Targets)
			}
			if id.Allows("staging") {
				t.Error("Allows(staging) = true for a cert with principals prod,sessions")
			}
			if s, err := LoadSigner(user); err != nil {
				t.Fatal(err)
			} else if _, ok := s.PublicKey().(*ssh.Certificate); !ok {
				t.Error("LoadSigner did not pick up the ssh-keygen certificate")
			}

			expired := sign("-I", "old", "-n", "prod", "-V", "20200101:20200102")
			if _, err := ak.Authorize(expired, remote, now); !errors.Is(err, ErrKeyExpired) || !errors.Is(err, ErrCertInvalid) {
				t.Errorf("expired cert: err = %v, want ErrKeyExpired and ErrCertInvalid", err)
			}

			wrong := sign("-I", "bob", "-n", "staging", "-V", "-5m:+1h")
			id, err = ak.Authorize(wrong, remote, now)
			if err != nil {
				t.Fatal(err)
			}
			if id.Allows("prod") {
				t.Error("cert with principal staging allows prod")
			}
			restricted := mustParseAK(t, `cert-authority,targets="prod" `+string(mustRead(t, ca+".pub")))
			if _, err := restricted.Authorize(wrong, remote, now); !errors.Is(err, ErrCertInvalid) {
				t.Errorf("wrong principal with targets=: err = %v, want ErrCertInvalid", err)
			}

			src := sign("-I", "src", "-n", "prod", "-V", "-5m:+1h", "-O", "source-address=10.0.0.0/8")
			if _, err := ak.Authorize(src, remote, now); err != nil {
				t.Errorf("source-address match: %v", err)
			}
			if _, err := ak.Authorize(src, net.ParseIP("192.0.2.1"), now); !errors.Is(err, ErrSourceNotAllowed) {
				t.Errorf("source-address mismatch: err = %v, want ErrSourceNotAllowed", err)
			}

			forced := sign("-I", "cmd", "-n", "prod", "-V", "-5m:+1h", "-O", "force-command=/bin/true")
			if _, err := ak.Authorize(forced, remote, now); !errors.Is(err, ErrCertInvalid) || !strings.Contains(err.Error(), "force-command") {
				t.Errorf("force-command: err = %v, want ErrCertInvalid naming force-command", err)
			}

			// -O clear drops permit-port-forwarding (and every other
			// extension); -O no-port-forwarding drops just that one.
			for _, opt := range []string{"clear", "no-port-forwarding"} {
				c := sign("-I", "cleared", "-n", "prod", "-V", "-5m:+1h", "-O", opt)
				_, err := ak.Authorize(c, remote, now)
				if !errors.Is(err, ErrKeyRestricted) || !strings.Contains(err.Error(), "permit-port-forwarding") {
					t.Errorf("-O %s: err = %v, want ErrKeyRestricted naming permit-port-forwarding", opt, err)
				}
			}
			// -O clear then -O permit-port-forwarding grants just that.
			if _, err := ak.Authorize(sign("-I", "only-fwd", "-n", "prod", "-V", "-5m:+1h", "-O", "clear", "-O", "permit-port-forwarding"), remote, now); err != nil {
				t.Errorf("-O clear -O permit-port-forwarding: %v", err)
			}

			host := sign("-I", "host", "-h", "-n", "prod", "-V", "-5m:+1h")
			if _, err := ak.Authorize(host, remote, now); !errors.Is(err, ErrCertInvalid) {
				t.Errorf("host cert: err = %v, want ErrCertInvalid", err)
			}
		})
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The signature over a certificate must be checked even when everything else
// about it is right: a self-made "certificate" claiming the trusted CA as
// signer is refused.
func TestAuthorizedKeys_AuthorizeForgedCert(t *testing.T) {
	ca, user, forger := newSigner(t), newSigner(t), newSigner(t)
	ak := mustParseAK(t, "cert-authority "+pubLine(ca.PublicKey())+"\n")
	cert := signCert(t, forger, user.PublicKey(), ssh.UserCert, testNow, []string{"*"})
	cert.SignatureKey = ca.PublicKey()
	if _, err := ak.Authorize(cert, nil, testNow); !errors.Is(err, ErrCertInvalid) {
		t.Errorf("forged cert: err = %v, want ErrCertInvalid", err)
	}
	// The parsed form (as a peer would send it) is refused too.
	parsed, err := ssh.ParsePublicKey(cert.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ak.Authorize(parsed, nil, testNow); !errors.Is(err, ErrCertInvalid) {
		t.Errorf("forged parsed cert: err = %v, want ErrCertInvalid", err)
	}
}
