package auth

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// OpenSSH options fail closed: each one is enforced, holds by construction,
// or makes the file fail to load naming the line and the option.

// TestParseAuthorizedKeys_UnsupportedOptions: every OpenSSH option that
// cachetun cannot honour, and every malformed permitopen=, fails the load
// with a *ParseError for its line whose text names the option.
func TestParseAuthorizedKeys_UnsupportedOptions(t *testing.T) {
	key := pubLine(newSigner(t).PublicKey())
	for _, tc := range []struct {
		name, opts, want string
	}{
		// The line of finding 6: command= alone makes it fail.
		{"finding 6", `restrict,no-port-forwarding,permitopen="127.0.0.1:1",command="/bin/false"`, "option command= is not supported"},
		{"command", `command="/usr/bin/redis-cli"`, "option command= is not supported"},
		{"command quoted", `command="echo \"hi, there\""`, "option command= is not supported"},
		{"environment", `environment="A=B"`, "option environment= is not supported"},
		{"tunnel", `tunnel="0"`, "option tunnel= is not supported"},
		{"permitlisten", `permitlisten="localhost:8080"`, "option permitlisten= is not supported"},
		{"principals", `cert-authority,principals="a"`, "option principals= is not supported"},
		{"verify-required", `verify-required`, "option verify-required is not supported"},
		{"no-touch-required", `no-touch-required`, "option no-touch-required is not supported"},
		{"agent-forwarding", `restrict,agent-forwarding`, "option agent-forwarding is not supported"},
		{"x11-forwarding", `restrict,X11-forwarding`, "option X11-forwarding is not supported"},
		{"pty", `restrict,port-forwarding,pty`, "option pty is not supported"},
		{"user-rc", `user-rc`, "option user-rc is not supported"},
		{"upper case", `COMMAND="x"`, "option COMMAND= is not supported"},
		{"unknown", `no-such-option`, `unknown option "no-such-option"`},
		{"restrict with value", `restrict="yes"`, "restrict takes no value"},
		{"port-forwarding with value", `port-forwarding="1"`, "port-forwarding takes no value"},
		{"permitopen without value", `permitopen`, "needs a value"},
		{"permitopen unquoted", `permitopen=a:1`, "double quotes"},
		{"permitopen empty", `permitopen=""`, "empty entry"},
		{"permitopen empty entry", `permitopen="a:1,,b:2"`, "empty entry"},
		{"permitopen no port", `permitopen="cache"`, `"cache" is not host:port`},
		{"permitopen bare IPv6", `permitopen="::1:6379"`, "[addr]:port"},
		{"permitopen port 0", `permitopen="cache:0"`, "invalid port"},
		{"permitopen port too big", `permitopen="cache:65536"`, "invalid port"},
		{"permitopen port sign", `permitopen="cache:+1"`, "invalid port"},
		{"permitopen port name", `permitopen="cache:redis"`, "invalid port"},
		{"permitopen empty host", `permitopen=":6379"`, "invalid host"},
		{"permitopen slash", `permitopen="cache/6379:1"`, "invalid host"},
		{"permitopen space", `permitopen="ca che:1"`, "invalid host"},
		{"permitopen zone", `permitopen="[fe80::1%eth0]:1"`, "zone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := "# header\n\n" + pubLine(newSigner(t).PublicKey()) + " ok\n" + tc.opts + " " + key + "\n"
			_, err := ParseAuthorizedKeys([]byte(data), akName)
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line != 4 || !errors.Is(err, ErrSyntax) {
				t.Fatalf("err = %v, want a *ParseError for line 4", err)
			}
			if !strings.HasPrefix(err.Error(), akName+":4: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q: want prefix %q and %q", err, akName+":4: ", tc.want)
			}
		})
	}
}

// TestAuthorizedKeys_ForwardingOptions: restrict and no-port-forwarding
// refuse the key with ErrKeyRestricted naming the option and the line;
// options apply in order as in OpenSSH (a later port-forwarding allows
// again); the options about what cachetun never offers change nothing.
func TestAuthorizedKeys_ForwardingOptions(t *testing.T) {
	k := newSigner(t).PublicKey()
	remote := net.ParseIP("192.0.2.1")
	for _, tc := range []struct {
		opts   string
		denied string // "" = allowed
	}{
		{"", ""},
		{"restrict", "restrict"},
		{"no-port-forwarding", "no-port-forwarding"},
		{"restrict,port-forwarding", ""},
		{"RESTRICT,Port-Forwarding", ""},
		{"no-port-forwarding,port-forwarding", ""},
		{"port-forwarding,restrict", "restrict"},
		{"restrict,port-forwarding,no-port-forwarding", "no-port-forwarding"},
		{"restrict,no-port-forwarding", "no-port-forwarding"},
		{`restrict,no-port-forwarding,permitopen="127.0.0.1:1"`, "no-port-forwarding"},
		{`restrict,permitopen="cache:*"`, "restrict"},
		{`restrict,port-forwarding,permitopen="cache:*"`, ""},
		{"no-pty,no-agent-forwarding,no-X11-forwarding,no-user-rc,touch-required", ""},
		{`restrict,port-forwarding,no-pty,targets="cache"`, ""},
	} {
		t.Run(tc.opts, func(t *testing.T) {
			line := pubLine(k) + " alice"
			if tc.opts != "" {
				line = tc.opts + " " + line
			}
			ak := mustParseAK(t, "# one comment line\n"+line+"\n")
			id, err := ak.Authorize(k, remote, testNow)
			if tc.denied == "" {
				if err != nil {
					t.Fatalf("Authorize: %v", err)
				}
				if id.Comment != "alice" {
					t.Errorf("Comment = %q", id.Comment)
				}
				return
			}
			if !errors.Is(err, ErrKeyRestricted) {
				t.Fatalf("err = %v, want ErrKeyRestricted", err)
			}
			want := "key " + Fingerprint(k) + " is restricted (" + tc.denied + ") on line 2 of authorized_keys: "
			if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "ask the operator") {
				t.Errorf("error %q: want prefix %q and a hint for the operator", err, want)
			}
		})
	}

	// The first line that passes from= and expiry-time= decides, as in
	// OpenSSH: a restricted line is not skipped for a later open one...
	ak := mustParseAK(t, "restrict "+pubLine(k)+" bastion\n"+pubLine(k)+" open\n")
	if _, err := ak.Authorize(k, remote, testNow); !errors.Is(err, ErrKeyRestricted) {
		t.Errorf("restricted first line: err = %v, want ErrKeyRestricted", err)
	}
	// ...but a line that does not apply (from=) is.
	ak = mustParseAK(t, `from="10.0.0.0/8",restrict `+pubLine(k)+" office\n"+pubLine(k)+" open\n")
	if id, err := ak.Authorize(k, remote, testNow); err != nil || id.Comment != "open" {
		t.Errorf("restricted line for another source: id = %v, err = %v, want the open line", id, err)
	}

	// On a cert-authority line, the options bind its certificates.
	ca, user := newSigner(t), newSigner(t)
	cert := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"cache"})
	for opts, restricted := range map[string]bool{
		"cert-authority,restrict":                 true,
		"cert-authority,no-port-forwarding":       true,
		"cert-authority,restrict,port-forwarding": false,
	} {
		ak := mustParseAK(t, opts+" "+pubLine(ca.PublicKey())+"\n")
		_, err := ak.Authorize(cert, remote, testNow)
		if restricted {
			if !errors.Is(err, ErrKeyRestricted) || !strings.Contains(err.Error(), "certificate authority "+Fingerprint(ca.PublicKey())+" is restricted") {
				t.Errorf("%s: err = %v, want ErrKeyRestricted naming the CA", opts, err)
			}
		} else if err != nil {
			t.Errorf("%s: %v", opts, err)
		}
	}
}

// TestIdentity_MayOpen: permitopen= filters streams by the node the
// gateway would dial: target name, N.TARGET, node address, with * for any
// host or port; entries of several options accumulate.
func TestIdentity_MayOpen(t *testing.T) {
	k := newSigner(t).PublicKey()
	type dest struct {
		target string
		index  int
		addr   string
	}
	var (
		node0   = dest{"cache", 0, "10.0.1.230:6379"}
		node1   = dest{"cache", 1, "10.0.1.231:6379"}
		seed    = dest{"cache", -1, "clustercfg.example.com:6379"}
		mc      = dest{"sessions", 0, "10.0.2.10:11211"}
		v6      = dest{"v6", 0, "[2001:db8::1]:6379"}
		weird   = dest{"cache", 2, "10.0.1.232:7000"}
		dotName = dest{"0.cache", 0, "10.0.9.9:6379"} // a target named "0.cache"
	)
	all := []dest{node0, node1, seed, mc, v6, weird, dotName}
	for _, tc := range []struct {
		opts  string
		allow []dest
	}{
		{``, all},
		{`permitopen="cache:*"`, []dest{node0, node1, seed, weird}},
		{`permitopen="cache:6379"`, []dest{node0, node1, seed}},
		{`permitopen="0.cache:*"`, []dest{node0, dotName}},
		{`permitopen="1.cache:6379"`, []dest{node1}},
		{`permitopen="10.0.1.230:6379"`, []dest{node0}},
		{`permitopen="10.0.1.230:6380"`, nil},
		{`permitopen="10.0.1.231:*"`, []dest{node1}},
		{`permitopen="CLUSTERCFG.example.com:6379"`, []dest{seed}},
		{`permitopen="[2001:db8:0::1]:6379"`, []dest{v6}},
		{`permitopen="[::ffff:10.0.1.230]:6379"`, []dest{node0}},
		{`permitopen="*:11211"`, []dest{mc}},
		{`permitopen="*:*"`, all},
		{`permitopen="0.cache:*,sessions:11211"`, []dest{node0, dotName, mc}},
		{`permitopen="0.cache:*",permitopen="sessions:11211"`, []dest{node0, dotName, mc}},
		{`permitopen="127.0.0.1:1"`, nil},
		{`permitopen="-1.cache:*,x.cache:*,.cache:*"`, nil},
		{`targets="sessions",permitopen="cache:*"`, []dest{node0, node1, seed, weird}}, // targets= is Allows' job
	} {
		t.Run(tc.opts, func(t *testing.T) {
			line := pubLine(k)
			if tc.opts != "" {
				line = tc.opts + " " + line
			}
			ak := mustParseAK(t, line+"\n")
			id, err := ak.Authorize(k, nil, testNow)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range all {
				err := id.MayOpen(d.target, d.index, d.addr)
				if want := slices.Contains(tc.allow, d); want != (err == nil) {
					t.Errorf("MayOpen(%q, %d, %q) = %v, want allowed %v", d.target, d.index, d.addr, err, want)
				}
				if err != nil && (!errors.Is(err, ErrNotPermitted) || !strings.Contains(err.Error(), "permitopen=") ||
					!strings.Contains(err.Error(), "line 1 of authorized_keys") || !strings.Contains(err.Error(), d.addr)) {
					t.Errorf("refusal %q: want ErrNotPermitted naming permitopen=, the line and %s", err, d.addr)
				}
			}
		})
	}

	// A certificate carries the permitopen= of its CA's line.
	ca, user := newSigner(t), newSigner(t)
	ak := mustParseAK(t, `cert-authority,permitopen="1.cache:*" `+pubLine(ca.PublicKey())+"\n")
	id, err := ak.Authorize(signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"cache"}), nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if id.MayOpen("cache", 1, node1.addr) != nil || id.MayOpen("cache", 0, node0.addr) == nil {
		t.Errorf("certificate: PermitOpen = %v, want node 1 only", id.PermitOpen)
	}
}

// TestAuthorizedKeys_CertForwarding: a user certificate needs
// permit-port-forwarding; force-command and unknown critical options are
// refused; source-address is honoured.
func TestAuthorizedKeys_CertForwarding(t *testing.T) {
	ca, user := newSigner(t), newSigner(t)
	ak := mustParseAK(t, "cert-authority "+pubLine(ca.PublicKey())+"\n")
	remote := net.ParseIP("192.0.2.1")
	for _, tc := range []struct {
		name  string
		edit  func(*ssh.Certificate)
		kinds []error // nil = accepted
		text  string
	}{
		{"default extensions", nil, nil, ""},
		{"only permit-port-forwarding", func(c *ssh.Certificate) {
			c.Extensions = map[string]string{"permit-port-forwarding": ""}
		}, nil, ""},
		{"no extensions (-O clear)", func(c *ssh.Certificate) { c.Extensions = nil },
			[]error{ErrKeyRestricted, ErrCertInvalid}, "lacks the permit-port-forwarding extension"},
		{"other extensions only", func(c *ssh.Certificate) {
			c.Extensions = map[string]string{"permit-pty": "", "permit-agent-forwarding": ""}
		}, []error{ErrKeyRestricted, ErrCertInvalid}, "permit-port-forwarding"},
		{"force-command", func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"force-command": "/bin/false"}
		}, []error{ErrCertInvalid}, "force-command"},
		{"force-command and source-address", func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"source-address": "192.0.2.0/24", "force-command": "/bin/false"}
		}, []error{ErrCertInvalid}, "force-command"},
		{"verify-required", func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"verify-required": ""}
		}, []error{ErrCertInvalid}, `"verify-required"`},
		{"unknown critical option", func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"x-custom@example.com": "1"}
		}, []error{ErrCertInvalid}, `"x-custom@example.com"`},
		{"source-address allows", func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"source-address": "192.0.2.0/24"}
		}, nil, ""},
		{"source-address refuses", func(c *ssh.Certificate) {
			c.CriticalOptions = map[string]string{"source-address": "10.0.0.0/8"}
		}, []error{ErrSourceNotAllowed}, "10.0.0.0/8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []certOpts
			if tc.edit != nil {
				opts = append(opts, tc.edit)
			}
			cert := signCert(t, ca, user.PublicKey(), ssh.UserCert, testNow, []string{"cache"}, opts...)
			_, err := ak.Authorize(cert, remote, testNow)
			if tc.kinds == nil {
				if err != nil {
					t.Fatalf("Authorize: %v", err)
				}
				return
			}
			for _, k := range tc.kinds {
				if !errors.Is(err, k) {
					t.Errorf("err = %v, want errors.Is %v", err, k)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %v does not contain %q", err, tc.text)
			}
		})
	}
}
