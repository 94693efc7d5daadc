package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names of the generated PKI inside a server's directory.
const (
	caCertName     = "ca.pem"
	serverCertName = "server.pem"
	serverKeyName  = "server-key.pem"
	clientCertName = "client.pem"
	clientKeyName  = "client-key.pem"
)

// pki is a throw-away CA with one server and one client certificate.
type pki struct {
	caFile         string
	clientCertFile string
	clientKeyFile  string
	// clientConfig trusts the CA and presents the client certificate.
	clientConfig *tls.Config
}

// writePKI generates an ECDSA P-256 CA, a server certificate for 127.0.0.1,
// ::1 and localhost and a client certificate, and writes them as PEM files
// into dir.
func writePKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cachetun testenv CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, caCertName), "CERTIFICATE", caDER); err != nil {
		return nil, err
	}

	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certName, keyName string) (tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("create %s certificate: %w", cn, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return tls.Certificate{}, err
		}
		if err := writePEM(filepath.Join(dir, certName), "CERTIFICATE", der); err != nil {
			return tls.Certificate{}, err
		}
		if err := writePEM(filepath.Join(dir, keyName), "PRIVATE KEY", keyDER); err != nil {
			return tls.Certificate{}, err
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	}
	if _, err := leaf(2, "localhost", x509.ExtKeyUsageServerAuth, serverCertName, serverKeyName); err != nil {
		return nil, err
	}
	client, err := leaf(3, "cachetun testenv client", x509.ExtKeyUsageClientAuth, clientCertName, clientKeyName)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &pki{
		caFile:         filepath.Join(dir, caCertName),
		clientCertFile: filepath.Join(dir, clientCertName),
		clientKeyFile:  filepath.Join(dir, clientKeyName),
		clientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: []tls.Certificate{client},
			ServerName:   "localhost",
			MinVersion:   tls.VersionTLS12,
		},
	}, nil
}

func writePEM(path, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}
