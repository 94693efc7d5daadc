// Package auth decides who may talk to whom: it loads SSH keys, reads
// authorized_keys and known_hosts, and makes and checks the channel-bound
// proofs that tie a client key to one transport session.
//
// The package knows nothing of networks beyond the net.IP and net.Addr
// values it is handed; the only connection it opens is the one to the local
// ssh-agent. Every transport (QUIC, TLS, SSH) uses the same functions, so a
// key, a certificate or a pinned host key means the same on all of them.
//
// # Keys
//
// GenerateKey writes a new ed25519 key pair in OpenSSH format. LoadSigner
// reads an unencrypted OpenSSH or PEM private key, refusing files that group
// or others can access (*PermissionError, as OpenSSH does) and picking up a
// certificate from path+"-cert.pub". AgentSigners returns the keys held by
// the ssh-agent at $SSH_AUTH_SOCK.
//
// # Server side: authorized_keys
//
// ParseAuthorizedKeys and LoadAuthorizedKeys read OpenSSH's authorized_keys
// format. AuthorizedKeys.Authorize maps a presented key (or user
// certificate) to an Identity that says which targets it may reach:
//
//	targets="prod-redis,sessions" ssh-ed25519 AAAA... alice
//	from="198.51.100.0/24,!198.51.100.7",expiry-time="20270101" ssh-ed25519 AAAA... ci
//	cert-authority,targets="staging" ssh-ed25519 AAAA... users-ca
//
// A user certificate from a cert-authority line grants its principals as
// target names ("*" grants all), narrowed by the CA line's targets=; it
// needs the permit-port-forwarding extension, and force-command or any
// critical option but source-address refuses it. Errors wrap ErrUnknownKey,
// ErrKeyExpired, ErrSourceNotAllowed, ErrKeyRestricted or ErrCertInvalid.
//
// Options fail closed: restrict and no-port-forwarding refuse the key
// (ErrKeyRestricted; a later port-forwarding undoes them, as in OpenSSH),
// permitopen="host:port,..." becomes Identity.PermitOpen, checked per
// stream with Identity.MayOpen (ErrNotPermitted), and any option cachetun
// cannot honour (command=, environment=, tunnel=, ...) or does not know,
// like any malformed line, makes the whole file an error that names the
// line: neither a typo nor a bastion's file may widen access silently.
//
// # Client side: known_hosts
//
// HostKeyChecker pins server host keys in an OpenSSH known_hosts file, one
// entry for all transports (the TLS certificate of a server is derived from
// its SSH host key). Unknown hosts are refused (*UnknownHostError) or, with
// AcceptNew, pinned on first use; a changed key is always refused
// (*HostKeyMismatchError). @cert-authority and @revoked lines are honoured.
// HostKeyAlgorithms tells an x/crypto/ssh client which host key algorithms
// to negotiate so that the pinned key is the one the server presents.
//
// # Channel binding
//
// On QUIC and TLS the client proves its key by signing a value exported
// from that very session (tls.ConnectionState.ExportKeyingMaterial):
// SignBinding signs "cachetun-binding-v1\x00"+binding, VerifyBinding checks
// it. A proof made for one session cannot be replayed or relayed to another,
// and any key type ssh-agent holds, certificates included, works the same
// on every transport. RSA keys sign with rsa-sha2-256; SHA-1 signatures are
// refused.
package auth
