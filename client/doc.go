// Package client is the laptop side of cachetun: profiles, the session
// supervisor (dial, transport fallback, reconnect with backoff), one local
// listener per node of the target, and cache-protocol rewriting so that
// Redis Cluster redirects and memcached discovery name local ports.
//
// A local connection accepted while the session is down waits up to
// Options.WaitForSession for the next session instead of failing at once.
package client
