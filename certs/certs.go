// Package certs builds the X.509 certificates and TLS configurations of the
// QUIC and TLS transports from SSH keys, and the TLS configuration used to
// reach upstream caches.
//
// The server's certificate is self-signed by its SSH host key, so the client
// pins the very key recorded in known_hosts on every transport. An OpenSSH
// host certificate, when the server has one, rides in a certificate
// extension so that known_hosts @cert-authority lines work too.
package certs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"golang.org/x/crypto/ssh"
)

// ALPN is the application protocol of cachetun's QUIC and TLS transports.
const ALPN = "cachetun/1"

// ALPNEarly is the same protocol from a gateway that serves, on QUIC too,
// the stream a client opens right behind its Hello (tunnel.EarlyHold).
// A gateway prefers it and a client offers it first; an older gateway
// picks ALPN, and the client then opens no stream before the Welcome on
// QUIC, as that gateway resets such streams.
const ALPNEarly = "cachetun/1+early"

// oidSSHHostCert marks the extension that carries an OpenSSH host
// certificate (wire format) for the certificate's key. Private arc.
var oidSSHHostCert = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 59999, 1, 1}

// Errors.
var (
	ErrNoPeerCert  = errors.New("server presented no certificate")
	ErrUnsupported = errors.New("unsupported key type")
)

// NormalizeKey returns a crypto.Signer for the raw private key types that
// ssh.ParseRawPrivateKey returns.
func NormalizeKey(raw any) (crypto.Signer, error) {
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return *k, nil
	case ed25519.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("%w %T: use an ed25519, ecdsa or rsa host key", ErrUnsupported, raw)
}

// LoadHostKey reads an OpenSSH private key file and returns it both as a
// crypto.Signer (for TLS) and as an ssh.Signer. Callers check file
// permissions first.
func LoadHostKey(path string) (crypto.Signer, ssh.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read host key: %w", err)
	}
	raw, err := ssh.ParseRawPrivateKey(pem)
	if err != nil {
		return nil, nil, fmt.Errorf("parse host key %q: %w", path, err)
	}
	key, err := NormalizeKey(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("host key %q: %w", path, err)
	}
	signer, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		return nil, nil, fmt.Errorf("host key %q: %w", path, err)
	}
	return key, signer, nil
}

// SelfSigned returns a TLS certificate for key, valid for ten years from
// an hour ago, optionally carrying an OpenSSH host certificate.
func SelfSigned(key crypto.Signer, hostCert *ssh.Certificate) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "cachetun host key"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"cachetun"},
	}
	if hostCert != nil {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidSSHHostCert, Value: hostCert.Marshal()}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ServerTLSConfig returns the TLS 1.3 configuration of the gateway. Client
// certificates are not requested: clients prove their SSH key on the
// control stream by signing the session's exported keying material.
func ServerTLSConfig(key crypto.Signer, hostCert *ssh.Certificate) (*tls.Config, error) {
	cert, err := SelfSigned(key, hostCert)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPNEarly, ALPN},
		SessionTicketsDisabled: true,
	}, nil
}

// ClientTLSConfig returns the TLS 1.3 configuration of the client. verify
// receives the server's SSH host key (or host certificate) and decides; it
// runs on every handshake, resumed or not. Chain verification is off
// because the pin replaces it.
func ClientTLSConfig(verify func(ssh.PublicKey) error) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPNEarly, ALPN},
		InsecureSkipVerify: true, // the host key is pinned in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			k, err := HostKey(cs)
			if err != nil {
				return err
			}
			return verify(k)
		},
	}
}

// HostKey returns the SSH form of the peer's certificate key: the embedded
// host certificate when it certifies the same key, else the plain key.
func HostKey(cs tls.ConnectionState) (ssh.PublicKey, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, ErrNoPeerCert
	}
	leaf := cs.PeerCertificates[0]
	pub, err := ssh.NewPublicKey(leaf.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("server certificate key: %w", err)
	}
	for _, ext := range leaf.Extensions {
		if !ext.Id.Equal(oidSSHHostCert) {
			continue
		}
		k, err := ssh.ParsePublicKey(ext.Value)
		if err != nil {
			return nil, fmt.Errorf("server host certificate: %w", err)
		}
		c, ok := k.(*ssh.Certificate)
		if !ok || !bytes.Equal(c.Key.Marshal(), pub.Marshal()) {
			return nil, errors.New("server host certificate does not certify the TLS key")
		}
		return c, nil
	}
	return pub, nil
}
