package main

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
	"github.com/cachetun/cachetun/tunnel"
)

// DoctorCmd checks, in order, everything a connect needs.
type DoctorCmd struct {
	ConnectCmd `embed:""`
}

// Check statuses. warn does not fail the doctor: something is off, but
// connect works around it.
const (
	statusOK   = "ok"
	statusFail = "FAIL"
	statusWarn = "warn"
	statusSkip = "skip"
)

// checkResult is one line of the doctor's report.
type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// doctorProbeTimeout bounds each transport's probe.
const doctorProbeTimeout = 4 * time.Second

// Run checks and prints one line per check; exit 0 when nothing failed.
func (c *DoctorCmd) Run(e *env) error {
	c.cmdName = "doctor"
	if len(c.Profiles) != 1 || c.All {
		return &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("doctor checks one PROFILE"), Hint: "run 'cachetun doctor PROFILE' (with --server, PROFILE may be a target name)"}
	}
	drain, _, cancel := stopContext(e.signals)
	defer cancel()
	ctx, cancelT := context.WithTimeout(drain, 2*time.Minute)
	defer cancelT()
	failed := false
	report := func(r checkResult) {
		if r.Status == statusFail {
			failed = true
		}
		if c.JSON {
			b, _ := json.Marshal(r)
			fmt.Fprintf(e.stdout, "%s\n", b)
			return
		}
		line := fmt.Sprintf("%-4s  %-14s %s", r.Status, r.Check, r.Detail)
		if r.Fix != "" {
			line += "\n      " + strings.Repeat(" ", 15) + "fix: " + r.Fix
		}
		fmt.Fprintln(e.stdout, line)
	}
	c.doctor(ctx, e, report)
	if failed {
		return &exitStatus{code: exitRuntime}
	}
	return nil
}

func (c *DoctorCmd) doctor(ctx context.Context, e *env, report func(checkResult)) {
	name := c.Profiles[0]
	// 1. The config file and the profile.
	path, explicit := c.Config, c.Config != ""
	if !explicit {
		path = client.DefaultConfigPath()
	}
	opts, err := c.options()
	if err != nil {
		report(checkResult{Check: "config", Status: statusFail, Detail: err.Error(), Fix: control.HintOf(err)})
		return
	}
	cfg, _ := client.LoadConfig(path, explicit)
	switch {
	case cfg != nil && cfg.Profiles[name] != nil:
		report(checkResult{Check: "config", Status: statusOK, Detail: fmt.Sprintf("profile %q in %s: target %s on %s", name, path, opts.Target, strings.Join(opts.Servers, ", "))})
	default:
		report(checkResult{Check: "config", Status: statusOK, Detail: fmt.Sprintf("no profile %q: target %s on %s from the flags", name, opts.Target, strings.Join(opts.Servers, ", "))})
	}

	// 2-3. Key files and the agent.
	agentKeys, agentLine := checkAgent()
	keyFiles := c.checkKeyFiles(opts, agentKeys, report)
	report(agentLine)
	haveKeys := keyFiles > 0 || agentKeys > 0

	transport := opts.Transport
	if transport == "" {
		transport = client.TransportAuto
	}
	// 4. known_hosts, for each gateway address.
	knownPath := opts.KnownHosts
	if knownPath == "" {
		knownPath = client.DefaultKnownHosts()
	}
	knownPath = auth.ExpandHome(knownPath)
	hostsOK := true
	seen := map[string]bool{}
	for _, srv := range opts.Servers {
		for _, pa := range probeAddrs(srv, transport) {
			if !pa.needed || seen[pa.addr] {
				continue
			}
			seen[pa.addr] = true
			r := checkKnownHost(knownPath, pa.addr, name)
			if r.Status != statusOK {
				hostsOK = false
			}
			report(r)
		}
	}

	// 5. DNS.
	dnsOK := true
	for _, srv := range opts.Servers {
		r := checkDNS(ctx, srv)
		if r.Status != statusOK {
			dnsOK = false
		}
		report(r)
	}
	switch {
	case !dnsOK:
		report(checkResult{Check: "transports", Status: statusSkip, Detail: "the gateway's name does not resolve"})
		return
	case !haveKeys:
		report(checkResult{Check: "transports", Status: statusSkip, Detail: "no key to authenticate with (see above)"})
		return
	}

	// 6. Each transport's reachability; the session of the profile's
	// transport is kept for the checks after.
	srv := opts.Servers[0]
	var (
		sess    tunnel.Session
		welcome *control.Welcome
		authErr error
	)
	results := map[string]error{}
	for _, pa := range probeAddrs(srv, transport) {
		o := opts
		o.Transport, o.Servers = pa.transport, []string{pa.addr}
		o.DialTimeout, o.QUICFallback = doctorProbeTimeout, doctorProbeTimeout
		o.Logger, o.Notice, o.Out = slog.New(slog.DiscardHandler), io.Discard, io.Discard
		o.AcceptNewHostKey = false
		o.Passphrase = terminalPassphrase(e)
		cl, err := client.New(o)
		if err != nil {
			report(checkResult{Check: pa.transport, Status: statusFail, Detail: err.Error(), Fix: control.HintOf(err)})
			return
		}
		s, w, err := cl.Dial(ctx)
		results[pa.transport] = err
		if unreachable(err) {
			r := checkResult{Check: pa.transport, Status: statusFail, Detail: fmt.Sprintf("%s %s: %v", pa.what, pa.addr, err), Fix: control.HintOf(err)}
			if !pa.needed {
				r.Status = statusWarn
				r.Fix = "not used by this profile (transport " + transport + "): needed only for --transport " + pa.transport
				if pa.transport == client.TransportSSH {
					r.Fix += " and stock 'ssh -L'"
				}
			}
			if pa.transport == client.TransportQUIC && transport == client.TransportAuto {
				r.Status = statusWarn
				r.Fix = "UDP seems blocked on this network: tls will be used"
			}
			report(r)
			continue
		}
		report(checkResult{Check: pa.transport, Status: statusOK, Detail: fmt.Sprintf("%s %s: the gateway answered", pa.what, pa.addr)})
		if !pa.needed || sess != nil || authErr != nil {
			if s != nil {
				s.Close()
			}
			continue
		}
		sess, welcome, authErr = s, w, err
	}
	if transport == client.TransportAuto && unreachable(results[client.TransportTLS]) && unreachable(results[client.TransportQUIC]) {
		// Both failures were reported above; nothing more to check.
		return
	}
	if sess == nil && authErr == nil {
		report(checkResult{Check: "authentication", Status: statusSkip, Detail: "no transport of the profile reached the gateway"})
		return
	}
	if sess != nil {
		defer sess.Close()
	}

	// 7. Authentication and 8. access to the target.
	switch {
	case authErr == nil:
		report(checkResult{Check: "authentication", Status: statusOK, Detail: fmt.Sprintf("the gateway accepted the key over %s (%s, session %s)", sess.Transport(), welcome.Server, welcome.Session)})
	case errors.Is(authErr, client.ErrUnknownTarget) || errors.Is(authErr, client.ErrTargetDenied):
		report(checkResult{Check: "authentication", Status: statusOK, Detail: "the gateway accepted the key"})
		report(checkResult{Check: "target", Status: statusFail, Detail: authErr.Error(), Fix: control.HintOf(authErr)})
		return
	case !hostsOK && errors.Is(authErr, auth.ErrUnknownHost):
		// The error carries the fingerprint the gateway presented: the
		// user compares it with the operator's before accepting it.
		report(checkResult{Check: "authentication", Status: statusSkip, Detail: "not tried: " + authErr.Error(), Fix: control.HintOf(authErr)})
		return
	default:
		report(checkResult{Check: "authentication", Status: statusFail, Detail: authErr.Error(), Fix: control.HintOf(authErr)})
		return
	}
	info := welcome.Target
	report(checkResult{Check: "target", Status: statusOK, Detail: fmt.Sprintf("%s: %s, %d nodes", info.Name, info.Type, len(info.Nodes))})

	// 9. A round trip to each node.
	for _, n := range info.Nodes {
		report(roundTrip(ctx, sess, info, n))
	}
}

// probeAddr is one transport's address to probe.
type probeAddr struct {
	transport, addr, what string
	needed                bool // the profile's transport uses it
}

// probeAddrs lists the transports to probe at server: the profile's
// own, and SSH on its default port as a courtesy.
func probeAddrs(server, transport string) []probeAddr {
	def := func(port string) string {
		if _, _, err := net.SplitHostPort(server); err == nil {
			return server
		}
		return net.JoinHostPort(strings.Trim(server, "[]"), port)
	}
	host := server
	if h, _, err := net.SplitHostPort(server); err == nil {
		host = h
	}
	sshAddr := net.JoinHostPort(strings.Trim(host, "[]"), client.DefaultSSHPort)
	quic := probeAddr{transport: client.TransportQUIC, addr: def(client.DefaultPort), what: "UDP"}
	tls := probeAddr{transport: client.TransportTLS, addr: def(client.DefaultPort), what: "TCP"}
	switch transport {
	case client.TransportSSH:
		return []probeAddr{{transport: client.TransportSSH, addr: def(client.DefaultSSHPort), what: "TCP", needed: true}}
	case client.TransportQUIC:
		quic.needed = true
	case client.TransportTLS:
		tls.needed = true
	default:
		quic.needed, tls.needed = true, true
	}
	return []probeAddr{quic, tls, {transport: client.TransportSSH, addr: sshAddr, what: "TCP"}}
}

// unreachable reports whether a probe's error means the transport did not
// get as far as the gateway's host key.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	var ce *control.Error
	switch {
	case errors.Is(err, client.ErrDNS), errors.Is(err, client.ErrRefused), errors.Is(err, client.ErrNoAnswer), errors.Is(err, client.ErrWrongServer):
		return true
	case errors.As(err, &ce):
		return false // a host key or authentication verdict
	}
	return true
}

// checkKeyFiles checks -i (or identity:) or the default key files, and
// returns how many are usable; agentKeys decides whether having none is
// a failure.
func (c *DoctorCmd) checkKeyFiles(opts client.Options, agentKeys int, report func(checkResult)) int {
	files := client.DefaultKeyFiles
	if opts.Identity != "" {
		files = []string{opts.Identity}
	}
	usable, bad := 0, 0
	var absent []string
	for _, f := range files {
		path := auth.ExpandHome(f)
		if _, err := os.Stat(path); err != nil {
			if opts.Identity != "" {
				bad++
				report(checkResult{Check: "key", Status: statusFail, Detail: fmt.Sprintf("%s: %v", path, err), Fix: "pass -i with an existing private key file, or drop identity: from the profile"})
			}
			absent = append(absent, f)
			continue
		}
		_, err := auth.LoadSigner(path)
		var pe *auth.PermissionError
		switch {
		case err == nil:
			usable++
			report(checkResult{Check: "key", Status: statusOK, Detail: path})
		case errors.Is(err, auth.ErrPassphrase):
			usable++
			report(checkResult{Check: "key", Status: statusOK, Detail: path + " (passphrase-protected: ssh-agent's copy, or a prompt on a terminal)"})
		case errors.As(err, &pe):
			bad++
			report(checkResult{Check: "key", Status: statusFail, Detail: err.Error(), Fix: pe.Fix})
		default:
			bad++
			report(checkResult{Check: "key", Status: statusFail, Detail: err.Error(), Fix: "pass -i with an OpenSSH private key file"})
		}
	}
	switch {
	case opts.Identity != "" || usable > 0 || bad > 0:
	case agentKeys > 0:
		report(checkResult{Check: "key", Status: statusOK, Detail: "no key file (" + strings.Join(absent, ", ") + "): ssh-agent's keys are used"})
	default:
		report(checkResult{Check: "key", Status: statusFail, Detail: "no SSH key: none of " + strings.Join(absent, ", ") + " exists and no ssh-agent holds a key",
			Fix: "run 'cachetun keygen' and give the .pub line to the gateway's operator, or ssh-add your key to ssh-agent"})
	}
	return usable
}

// checkAgent counts ssh-agent's keys; the line is reported after the key
// files.
func checkAgent() (int, checkResult) {
	if os.Getenv("SSH_AUTH_SOCK") == "" {
		return 0, checkResult{Check: "agent", Status: statusOK, Detail: "no ssh-agent (SSH_AUTH_SOCK is not set): key files are used"}
	}
	signers, err := auth.AgentSigners()
	if err != nil {
		return 0, checkResult{Check: "agent", Status: statusWarn, Detail: "ssh-agent: " + err.Error(), Fix: "start ssh-agent (eval $(ssh-agent)) and ssh-add your key, or unset SSH_AUTH_SOCK"}
	}
	return len(signers), checkResult{Check: "agent", Status: statusOK, Detail: fmt.Sprintf("ssh-agent holds %d keys", len(signers))}
}

// checkKnownHost looks for a known_hosts entry for addr, whatever its
// key: the probes compare the gateway's actual key later.
func checkKnownHost(path, addr, profile string) checkResult {
	fix := fmt.Sprintf("compare the gateway's key with what 'cachetun server init' printed to its operator, then run 'cachetun connect %s --accept-new-host-key' once, or add the operator's known_hosts line to %s", profile, path)
	if _, err := os.Stat(path); err != nil {
		return checkResult{Check: "known_hosts", Status: statusFail, Detail: fmt.Sprintf("%s: no such file, so %s is not known", path, addr), Fix: fix}
	}
	cb, err := knownhosts.New(path)
	if err != nil {
		return checkResult{Check: "known_hosts", Status: statusFail, Detail: fmt.Sprintf("read %s: %v", path, err), Fix: "fix or remove the line named"}
	}
	// A throwaway key: the verdict says whether the host has any entry.
	pub, _, _ := ed25519.GenerateKey(nil)
	probe, _ := ssh.NewPublicKey(pub)
	err = cb(knownhostsName(addr), &net.TCPAddr{IP: net.IPv4zero}, probe)
	var ke *knownhosts.KeyError
	if errors.As(err, &ke) && len(ke.Want) > 0 {
		return checkResult{Check: "known_hosts", Status: statusOK, Detail: fmt.Sprintf("%s has an entry for %s", path, addr)}
	}
	if hostCAListed(path) {
		return checkResult{Check: "known_hosts", Status: statusOK, Detail: fmt.Sprintf("%s has no key for %s, but trusts a host CA (checked on connect)", path, addr)}
	}
	return checkResult{Check: "known_hosts", Status: statusFail, Detail: fmt.Sprintf("%s has no entry for %s", path, addr), Fix: fix}
}

// knownhostsName is addr as known_hosts writes it: host alone on port 22.
func knownhostsName(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "22" {
		return addr
	}
	return net.JoinHostPort(host, port)
}

func hostCAListed(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(strings.TrimSpace(sc.Text()), "@cert-authority") {
			return true
		}
	}
	return false
}

// checkDNS resolves the gateway's host name.
func checkDNS(ctx context.Context, server string) checkResult {
	host := server
	if h, _, err := net.SplitHostPort(server); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if net.ParseIP(host) != nil {
		return checkResult{Check: "dns", Status: statusOK, Detail: host + " is an IP address"}
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(dctx, host)
	if err != nil {
		return checkResult{Check: "dns", Status: statusFail, Detail: fmt.Sprintf("cannot resolve %q: %v", host, err),
			Fix: "check the host name in --server (or server: in the profile); if the gateway is only known inside a VPN or VPC, connect the VPN first"}
	}
	return checkResult{Check: "dns", Status: statusOK, Detail: fmt.Sprintf("%s is %s", host, strings.Join(addrs, ", "))}
}

// roundTrip opens a stream to node n and asks it something the cache
// answers without side effects: PING for redis, version for memcached; a
// tcp target only has to be reachable.
func roundTrip(ctx context.Context, sess tunnel.Session, info *control.TargetInfo, n control.NodeInfo) checkResult {
	what := n.Addr
	if n.Role != "" {
		what += " (" + n.Role + ")"
	}
	res := checkResult{Check: "node", Detail: what}
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	st, err := sess.OpenStream(octx, tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: info.Name, Node: n.Addr})
	if err != nil {
		res.Status, res.Detail = statusFail, what+": open stream: "+err.Error()
		return res
	}
	defer closeGently(st)
	_ = st.SetDeadline(time.Now().Add(5 * time.Second))
	var req, want string
	switch info.Type {
	case "redis", "redis-cluster":
		req, want = "PING\r\n", "+PONG"
	case "memcached":
		req, want = "version\r\n", "VERSION "
	}
	if req == "" {
		_ = st.SetReadDeadline(time.Now().Add(time.Second))
		_, err := st.Read(make([]byte, 1))
		var se *tunnel.StatusError
		if errors.As(err, &se) {
			return nodeRefused(res, what, se)
		}
		res.Status, res.Detail = statusOK, fmt.Sprintf("%s: connected in %s", what, time.Since(start).Round(100*time.Microsecond))
		return res
	}
	if _, err := io.WriteString(st, req); err != nil {
		res.Status, res.Detail = statusFail, what+": write: "+err.Error()
		return res
	}
	line, err := bufio.NewReader(io.LimitReader(st, 512)).ReadString('\n')
	var se *tunnel.StatusError
	switch {
	case errors.As(err, &se):
		return nodeRefused(res, what, se)
	case err != nil:
		res.Status, res.Detail = statusFail, fmt.Sprintf("%s: no answer: %v", what, err)
		res.Fix = "the gateway reached the node, which did not answer: ask the operator to check the node"
		return res
	}
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, want) {
		res.Status, res.Detail = statusFail, fmt.Sprintf("%s: answered %q to %s", what, printable(line, 80), strings.TrimSpace(req))
		if strings.HasPrefix(line, "-NOAUTH") {
			res.Fix = "the node wants a password: ask the gateway's operator to set auth: on the target"
		}
		return res
	}
	res.Status, res.Detail = statusOK, fmt.Sprintf("%s: %s in %s", what, printable(line, 40), time.Since(start).Round(100*time.Microsecond))
	return res
}

func nodeRefused(res checkResult, what string, se *tunnel.StatusError) checkResult {
	res.Status, res.Detail = statusFail, what+": "+se.Error()
	switch se.Code {
	case tunnel.StatusUnreachable:
		res.Fix = "the gateway cannot reach this node: ask its operator to check the node and the gateway's security group"
	case tunnel.StatusDenied:
		res.Fix = "ask the gateway's operator to extend permitopen= on your key's line"
	}
	return res
}

// printable cuts s to n bytes of printable ASCII.
func printable(s string, n int) string {
	b := []byte(s)
	if len(b) > n {
		b = b[:n]
	}
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// closeGently ends a probe stream as connect ends a connection: half-close,
// then read the cache's end (at most 1 s), then close, so that the
// gateway's audit line says result=ok rather than a reset by the client.
func closeGently(st tunnel.Stream) {
	_ = st.CloseWrite()
	_ = st.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(st, 64<<10))
	_ = st.Close()
}
