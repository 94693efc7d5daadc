package auth

import (
	"crypto/rand"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// bindingContext prefixes every signed binding so that a binding signature
// can never be mistaken for a signature of any other protocol (SSH user auth,
// git, ssh-keygen -Y ...).
const bindingContext = "cachetun-binding-v1\x00"

// MinBindingLen is the shortest binding value SignBinding and VerifyBinding
// accept. Use 32 bytes of TLS exported keying material or the SSH session ID.
const MinBindingLen = 16

// keyAlgoDSA is the SSH name of DSA keys and of their (SHA-1) signature
// format. x/crypto/ssh deprecates its own constant (keyAlgoDSA)
// because DSA is insecure; we still have to recognise the name, to refuse
// such keys and signatures with a clear error rather than a generic one.
const keyAlgoDSA = "ssh-dss"

func bindingMessage(binding []byte) []byte {
	msg := make([]byte, 0, len(bindingContext)+len(binding))
	msg = append(msg, bindingContext...)
	return append(msg, binding...)
}

// plainType returns the key type of k, or of the certified key if k is a
// certificate.
func plainType(k ssh.PublicKey) string {
	if c, ok := k.(*ssh.Certificate); ok {
		return c.Key.Type()
	}
	return k.Type()
}

// SignBinding signs "cachetun-binding-v1\x00"+binding with s, proving
// possession of s's key for the session that binding was exported from
// (DESIGN invariant 2). RSA keys sign with rsa-sha2-256, never SHA-1.
func SignBinding(s ssh.Signer, binding []byte) (*ssh.Signature, error) {
	if s == nil {
		return nil, fmt.Errorf("sign binding: no signer")
	}
	if len(binding) < MinBindingLen {
		return nil, fmt.Errorf("sign binding: binding is %d bytes, want at least %d", len(binding), MinBindingLen)
	}
	msg := bindingMessage(binding)
	switch plainType(s.PublicKey()) {
	case ssh.KeyAlgoRSA:
		as, ok := s.(ssh.AlgorithmSigner)
		if !ok {
			return nil, fmt.Errorf("sign binding: rsa key %s cannot sign with rsa-sha2-256: use an ed25519 key", Fingerprint(s.PublicKey()))
		}
		sig, err := as.SignWithAlgorithm(rand.Reader, msg, ssh.KeyAlgoRSASHA256)
		if err != nil {
			return nil, fmt.Errorf("sign binding with %s: %w", Fingerprint(s.PublicKey()), err)
		}
		return sig, nil
	case keyAlgoDSA:
		return nil, fmt.Errorf("sign binding: dsa key %s is not supported: use an ed25519 key", Fingerprint(s.PublicKey()))
	}
	sig, err := s.Sign(rand.Reader, msg)
	if err != nil {
		return nil, fmt.Errorf("sign binding with %s: %w", Fingerprint(s.PublicKey()), err)
	}
	return sig, nil
}

// VerifyBinding checks a signature made by SignBinding with the key k (a
// plain key or a certificate, whose certified key is used). SHA-1 signature
// formats (ssh-rsa, ssh-dss) are rejected. Errors wrap ErrBadSignature.
func VerifyBinding(k ssh.PublicKey, binding []byte, sig *ssh.Signature) error {
	if k == nil || sig == nil {
		return newError(ErrBadSignature, "binding proof is missing a key or signature: the client must sign the session binding")
	}
	if len(binding) < MinBindingLen {
		return newError(ErrBadSignature, "binding is %d bytes, want at least %d", len(binding), MinBindingLen)
	}
	switch sig.Format {
	case ssh.KeyAlgoRSA, keyAlgoDSA:
		return newError(ErrBadSignature,
			"binding proof for key %s uses the %s signature format (sha-1), which is refused: upgrade the client or its ssh-agent to sign with rsa-sha2-256, or use an ed25519 key",
			Fingerprint(k), sig.Format)
	}
	if err := k.Verify(bindingMessage(binding), sig); err != nil {
		return newError(ErrBadSignature,
			"binding proof for key %s does not verify: %v: the signature was made for another session or another key", Fingerprint(k), err)
	}
	return nil
}
