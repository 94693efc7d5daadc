// Package server is the cachetun gateway: configuration, targets and their
// discovery, authorisation of sessions and streams, upstream dialling (TLS,
// AUTH), audit log, metrics and lifecycle (drain on SIGTERM, reload of
// server.yaml and authorized_keys on SIGHUP).
//
// Lifecycle: New loads keys and targets without listening; Listen opens the
// configured transports; Serve(ctx, ln) accepts sessions from one listener
// and closes it when it returns; Drain stops taking sessions, sends GoAway,
// waits for open streams up to limits.drain_timeout, closes every session
// and finally the listeners.
package server
