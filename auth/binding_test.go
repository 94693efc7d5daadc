package auth

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestSignBinding_RoundTrip(t *testing.T) {
	t.Parallel()
	binding := bytes.Repeat([]byte{0xab}, 32)
	ca := newSigner(t)
	ed := newSigner(t)
	cert := signCert(t, ca, ed.PublicKey(), ssh.UserCert, testNow, []string{"prod"})
	certSigner, err := ssh.NewCertSigner(cert, ed)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		signer     ssh.Signer
		wantFormat string
	}{
		{"ed25519", ed, ssh.KeyAlgoED25519},
		{"ecdsa", newECDSASigner(t), ssh.KeyAlgoECDSA256},
		{"rsa", newRSASigner(t), ssh.KeyAlgoRSASHA256},
		{"certificate", certSigner, ssh.KeyAlgoED25519},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := SignBinding(tc.signer, binding)
			if err != nil {
				t.Fatal(err)
			}
			if sig.Format != tc.wantFormat {
				t.Errorf("signature format = %q, want %q", sig.Format, tc.wantFormat)
			}
			if err := VerifyBinding(tc.signer.PublicKey(), binding, sig); err != nil {
				t.Errorf("VerifyBinding: %v", err)
			}
			// Another session's binding must not verify.
			other := bytes.Repeat([]byte{0xcd}, 32)
			if err := VerifyBinding(tc.signer.PublicKey(), other, sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("VerifyBinding(other binding) = %v, want ErrBadSignature", err)
			}
			// Another key must not verify.
			if err := VerifyBinding(newSigner(t).PublicKey(), binding, sig); !errors.Is(err, ErrBadSignature) {
				t.Errorf("VerifyBinding(other key) = %v, want ErrBadSignature", err)
			}
		})
	}
}

func TestSignBinding_IsDomainSeparated(t *testing.T) {
	// A plain signature over the binding (what another protocol might
	// produce) must not pass as a binding proof.
	s := newSigner(t)
	binding := bytes.Repeat([]byte{1}, 32)
	sig, err := s.Sign(rand.Reader, binding)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyBinding(s.PublicKey(), binding, sig); !errors.Is(err, ErrBadSignature) {
		t.Errorf("VerifyBinding(undomained signature) = %v, want ErrBadSignature", err)
	}
}

func TestVerifyBinding_RejectsSHA1(t *testing.T) {
	t.Parallel()
	s := newRSASigner(t)
	binding := bytes.Repeat([]byte{2}, 32)
	sig, err := s.(ssh.AlgorithmSigner).SignWithAlgorithm(rand.Reader, bindingMessage(binding), ssh.KeyAlgoRSA)
	if err != nil {
		t.Fatal(err)
	}
	// The signature itself is valid ...
	if err := s.PublicKey().Verify(bindingMessage(binding), sig); err != nil {
		t.Fatal(err)
	}
	// ... but its SHA-1 format is refused.
	if err := VerifyBinding(s.PublicKey(), binding, sig); !errors.Is(err, ErrBadSignature) {
		t.Errorf("VerifyBinding(ssh-rsa) = %v, want ErrBadSignature", err)
	}
}

func TestVerifyBinding_Errors(t *testing.T) {
	s := newSigner(t)
	binding := bytes.Repeat([]byte{3}, 32)
	sig, err := SignBinding(s, binding)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		key     ssh.PublicKey
		binding []byte
		sig     *ssh.Signature
	}{
		{"nil key", nil, binding, sig},
		{"nil signature", s.PublicKey(), binding, nil},
		{"short binding", s.PublicKey(), binding[:8], sig},
		{"empty binding", s.PublicKey(), nil, sig},
		{"wrong format", s.PublicKey(), binding, &ssh.Signature{Format: ssh.KeyAlgoECDSA256, Blob: sig.Blob}},
		{"truncated blob", s.PublicKey(), binding, &ssh.Signature{Format: sig.Format, Blob: sig.Blob[:10]}},
	} {
		if err := VerifyBinding(tc.key, tc.binding, tc.sig); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: err = %v, want ErrBadSignature", tc.name, err)
		}
	}
}

func TestSignBinding_Errors(t *testing.T) {
	if _, err := SignBinding(nil, make([]byte, 32)); err == nil {
		t.Error("nil signer: want error")
	}
	if _, err := SignBinding(newSigner(t), make([]byte, MinBindingLen-1)); err == nil {
		t.Error("short binding: want error")
	}
}

func TestSignBinding_RSAWithoutAlgorithmSigner(t *testing.T) {
	_, err := SignBinding(rsaOnlySigner{newRSASigner(t)}, make([]byte, 32))
	if err == nil {
		t.Fatal("RSA signer without AlgorithmSigner: want error, not a SHA-1 signature")
	}
}

// rsaOnlySigner hides the AlgorithmSigner interface of an RSA signer.
type rsaOnlySigner struct{ ssh.Signer }
