// Package server is the cachetun gateway: configuration, targets and their
// discovery, authorisation of sessions and streams, upstream dialling (TLS,
// AUTH), audit log, metrics and lifecycle (drain on SIGTERM, reload of
// server.yaml and authorized_keys on SIGHUP).
//
// Lifecycle (run.go): New loads keys and targets without listening;
// Run(ctx) opens the configured transports and the metrics address, starts
// topology discovery and serves; when ctx ends it drains (stops taking
// sessions, sends GoAway, waits for open streams up to
// limits.drain_timeout, closes every session) and returns once the
// listeners, sessions, discovery loops and metrics server have stopped.
// Close ends all of it at once; Reload swaps in a new configuration.
package server
