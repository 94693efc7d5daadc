package control

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestWire_FrameNumbers: the frame type numbers are the wire format
// (tunnel/PROTOCOL.md, "Control stream"); moving or renaming must not
// renumber them.
func TestWire_FrameNumbers(t *testing.T) {
	for _, tc := range []struct {
		typ  FrameType
		want byte
	}{
		{FrameHello, 1}, {FrameWelcome, 2}, {FrameTopology, 3}, {FramePing, 4},
		{FramePong, 5}, {FrameGoAway, 6}, {FrameRefresh, 7}, {FrameRevoked, 8},
		{FrameAck, 9}, {FrameFin, 10}, {FrameReset, 11},
	} {
		if byte(tc.typ) != tc.want {
			t.Errorf("frame type %d, want %d", tc.typ, tc.want)
		}
	}
	if ProtocolVersion != 2 {
		t.Errorf("ProtocolVersion = %d, want 2", ProtocolVersion)
	}
}

// TestWire_ProtocolTable: the frame table of tunnel/PROTOCOL.md names
// every frame type with the number it has here.
func TestWire_ProtocolTable(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "tunnel", "PROTOCOL.md"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]FrameType{
		"Hello": FrameHello, "Welcome": FrameWelcome, "Topology": FrameTopology, "Ping": FramePing,
		"Pong": FramePong, "GoAway": FrameGoAway, "Refresh": FrameRefresh, "Revoked": FrameRevoked,
		"Ack": FrameAck, "Fin": FrameFin, "Reset": FrameReset,
	}
	got := map[string]FrameType{}
	row := regexp.MustCompile(`(?m)^\| (\d+) (\w+)(?: / (\d+) (\w+))? \|`)
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		for i := 1; i+1 < len(m) && m[i] != ""; i += 2 {
			n, _ := strconv.Atoi(m[i])
			got[m[i+1]] = FrameType(n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("PROTOCOL.md lists %d frame types %v, want %d", len(got), got, len(want))
	}
	for name, typ := range want {
		if g, ok := got[name]; !ok || g != typ {
			t.Errorf("PROTOCOL.md: frame %s is %d (listed: %v), want %d", name, g, ok, typ)
		}
	}
}

// TestWire_JSON: the JSON field names and the code strings of every
// message, as an older peer reads them.
func TestWire_JSON(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{Hello{Client: "cachetun 1.0", Target: "a", Targets: []string{"a", "b"}, All: true, List: true,
			PublicKey: []byte{1}, SigFormat: "ssh-ed25519", SigBlob: []byte{2}, SigRest: []byte{3}},
			`{"client":"cachetun 1.0","target":"a","targets":["a","b"],"all":true,"list":true,"public_key":"AQ==","sig_format":"ssh-ed25519","sig_blob":"Ag==","sig_rest":"Aw=="}`},
		{Welcome{Code: CodeUnknownKey, Error: "e", Hint: "h"},
			`{"ok":false,"code":"unknown_key","error":"e","hint":"h","Target":null}`},
		{Welcome{OK: true, Server: "s", Session: "id", Target: &TargetInfo{Name: "a", Type: "redis-cluster", Version: 2,
			Nodes: []NodeInfo{{Addr: "10.0.1.1:6379", ID: "07c3", Role: "master", Slots: "0-5460"}}},
			Allowed: []TargetSummary{{Name: "a", Type: "redis", Nodes: 1}}},
			`{"ok":true,"server":"s","session":"id","Target":{"name":"a","type":"redis-cluster","nodes":[{"addr":"10.0.1.1:6379","id":"07c3","role":"master","slots":"0-5460"}],"version":2},"allowed":[{"name":"a","type":"redis","nodes":1}]}`},
		{Revoked{Code: CodeTargetDenied, Error: "e"}, `{"code":"target_denied","error":"e"}`},
		{Hello{Target: "a", Resume: true}, `{"client":"","target":"a","resume":true}`},
		{Welcome{OK: true, ResumeGraceMS: 120000}, `{"ok":true,"Target":null,"resume_grace_ms":120000}`},
		{Refresh{Target: "a"}, `{"target":"a"}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("%T:\n got %s\nwant %s", tc.v, b, tc.want)
		}
	}
	codes := map[Code]string{
		CodeUnknownKey: "unknown_key", CodeKeyExpired: "key_expired", CodeSourceDenied: "source_denied",
		CodeCertInvalid: "cert_invalid", CodeKeyRestricted: "key_restricted", CodeDenied: "denied",
		CodeProtocol: "protocol", CodeBadKey: "bad_key", CodeBadSignature: "bad_signature",
		CodeTooManyTries: "too_many_tries", CodeSessionLimit: "session_limit", CodeRateLimited: "rate_limited",
		CodeUnknownTarget: "unknown_target", CodeTargetDenied: "target_denied", CodeTargetRemoved: "target_removed",
	}
	for c, want := range codes {
		if string(c) != want {
			t.Errorf("code %q, want %q", c, want)
		}
	}
}

// TestCode_KeyRefusal: a refused key lets the client offer the next one;
// a refused session does not.
func TestCode_KeyRefusal(t *testing.T) {
	for _, c := range []Code{CodeUnknownKey, CodeKeyExpired, CodeSourceDenied, CodeCertInvalid, CodeKeyRestricted, CodeDenied} {
		if !c.KeyRefusal() {
			t.Errorf("%q: not a key refusal", c)
		}
	}
	for _, c := range []Code{CodeProtocol, CodeBadKey, CodeBadSignature, CodeTooManyTries, CodeSessionLimit,
		CodeRateLimited, CodeUnknownTarget, CodeTargetDenied, CodeTargetRemoved, ""} {
		if c.KeyRefusal() {
			t.Errorf("%q: a key refusal, want a session refusal", c)
		}
	}
}

// TestImports_Layering: cmd → client, server → control → tunnel → auth,
// certs. No package imports one above it; in particular tunnel knows
// nothing of the control messages (targets, roles, slots).
func TestImports_Layering(t *testing.T) {
	const mod = "github.com/cachetun/cachetun/"
	above := map[string][]string{
		"control": {"client", "server", "cmd"},
		"tunnel":  {"control", "client", "server", "cmd"},
		"auth":    {"tunnel", "control", "client", "server", "cmd"},
		"certs":   {"tunnel", "control", "client", "server", "cmd"},
	}
	for dir, banned := range above {
		files, err := filepath.Glob(filepath.Join("..", dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in %s: %v", dir, err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, is := range af.Imports {
				p, _ := strconv.Unquote(is.Path.Value)
				for _, b := range banned {
					if p == mod+b || strings.HasPrefix(p, mod+b+"/") {
						t.Errorf("%s imports %s, a package above it", f, p)
					}
				}
			}
		}
	}
}
