package server

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachetun/cachetun/control"
)

// tlsClusterNode is a fake cluster node behind TLS with a certificate
// for dnsName (self-signed: it is its own CA). It counts handshakes that
// completed and records what arrived after them.
type tlsClusterNode struct {
	Addr  string
	Pool  *x509.CertPool
	shook atomic.Int64
	mu    sync.Mutex
	got   strings.Builder
}

func startTLSClusterNode(t *testing.T, dnsName, myid string) *tlsClusterNode {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	n := &tlsClusterNode{Pool: x509.NewCertPool()}
	n.Pool.AddCert(cert)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	n.Addr = ln.Addr().String()
	reply := fakeClusterNode(bulk(myid))
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				n.shook.Add(1)
				reply(c, bufio.NewReader(readerFunc(func(p []byte) (int, error) {
					k, err := c.Read(p)
					n.mu.Lock()
					n.got.Write(p[:k])
					n.mu.Unlock()
					return k, err
				})))
			}()
		}
	}()
	return n
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestTarget_VetNode_TLS: with upstream TLS, the verification speaks TLS
// to the checked IP and verifies the certificate for the announced host
// name; a node whose certificate does not match is refused before AUTH,
// so the password never reaches it.
func TestTarget_VetNode_TLS(t *testing.T) {
	good := startTLSClusterNode(t, "node-1.cache.internal", idA)
	_, port, _ := net.SplitHostPort(good.Addr)
	res := &fakeResolver{}
	res.set("node-1.cache.internal", "127.0.0.1")
	res.set("impostor.cache.internal", "127.0.0.1")
	tg := testTarget(TypeRedisCluster, "127.0.0.1/32")
	tg.lookup = res.lookup
	tg.upstreamTLS = &tls.Config{RootCAs: good.Pool, MinVersion: tls.VersionTLS12}
	tg.cfg.Auth = &UpstreamAuth{PasswordFile: "unused"}
	tg.password = []byte("s3cret-cluster-password")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	r := tg.vetNode(ctx, control.NodeInfo{Addr: net.JoinHostPort("node-1.cache.internal", port), ID: idA}, nil)
	if r.err != nil || r.dial != good.Addr {
		t.Fatalf("the node with a matching certificate: %+v", r)
	}
	good.mu.Lock()
	got := good.got.String()
	good.mu.Unlock()
	if !strings.Contains(got, "s3cret-cluster-password") || !strings.Contains(got, "MYID") {
		t.Fatalf("the verified node did not get AUTH then CLUSTER MYID over TLS: %q", got)
	}

	// The same server announced under a name its certificate does not
	// hold: refused at the handshake, nothing sent.
	before := good.shook.Load()
	r = tg.vetNode(ctx, control.NodeInfo{Addr: net.JoinHostPort("impostor.cache.internal", port), ID: idA}, nil)
	var re *NodeRefusedError
	if !errors.As(r.err, &re) || re.Reason != rejectUnreachable || !strings.Contains(r.err.Error(), `certificate is not valid for "impostor.cache.internal"`) {
		t.Fatalf("a certificate for another name: %v, want an unreachable refusal naming the TLS failure", r.err)
	}
	if n := good.shook.Load() - before; n != 0 {
		t.Fatalf("%d handshakes completed for the wrong name, want 0", n)
	}
}

// FuzzVetNodeAddr: whatever address a cache announces for a node, the
// checks neither panic nor admit one whose dial address lies outside the
// networks; nothing is resolved for a name that is not a host name.
func FuzzVetNodeAddr(f *testing.F) {
	for _, s := range []string{
		"10.0.0.1:6379", "169.254.169.254:80", "[fd00:ec2::254]:80", "[::ffff:169.254.169.254]:80",
		"[fe80::1%eth0]:6379", "node-1.cache.internal:6379", "bad host!:1", ":6379", "10.0.0.1:0",
		"10.0.0.1:65536", "[::1]:6379", "127.0.0.1:6379", "x:y", "", "\x00:1",
	} {
		f.Add(s)
	}
	tg := testTarget(TypeMemcached) // default networks, no id to verify
	tg.lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
		if !validHostname(host) {
			return nil, fmt.Errorf("resolved %q, which is not a host name", host)
		}
		return []netip.Addr{netip.MustParseAddr("169.254.169.254")}, nil
	}
	f.Fuzz(func(t *testing.T, addr string) {
		r := tg.vetNode(context.Background(), control.NodeInfo{Addr: addr}, nil)
		if r.err == nil {
			ap, err := netip.ParseAddrPort(r.dial)
			if err != nil {
				t.Fatalf("%q admitted with dial address %q", addr, r.dial)
			}
			if err := tg.policy.check(ap.Addr(), nil); err != nil {
				t.Fatalf("%q admitted at %s, which the policy refuses: %v", addr, ap, err)
			}
			return
		}
		if strings.Contains(r.err.Error(), "which is not a host name") {
			t.Fatalf("%q: %v", addr, r.err)
		}
	})
}

// FuzzNetPolicy: an address the default policy admits is in a private
// range, and is neither loopback, link-local, multicast nor a metadata
// address, in whatever IPv6 form it comes.
func FuzzNetPolicy(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "169.254.169.254", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "fd00:ec2::254", "::1", "fc00::1", "100.100.100.200"} {
		b := netip.MustParseAddr(s).As16()
		f.Add(b[:])
	}
	p, _ := parseNetworks(nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		ip, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		if p.check(ip, nil) != nil {
			return
		}
		u := ip.Unmap()
		if forbidden(ip) != "" || isLoopbackIP(ip) || u.IsLinkLocalUnicast() || u.IsMulticast() {
			t.Fatalf("%s admitted", ip)
		}
		if v4, ok := embeddedIPv4(ip); ok && (forbidden(v4) != "" || v4.IsLoopback()) {
			t.Fatalf("%s admitted: it embeds %s", ip, v4)
		}
		in := false
		for _, n := range defaultNetworks {
			in = in || n.Contains(u)
		}
		if !in {
			t.Fatalf("%s admitted outside the private ranges", ip)
		}
	})
}
