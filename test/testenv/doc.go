// Package testenv starts real cache servers (redis-server, memcached) on
// loopback for end-to-end tests.
//
// Every helper takes a testing.TB, calls t.Helper and registers its own
// cleanup with t.Cleanup: processes are stopped (SIGTERM, then SIGKILL after a
// grace period) and waited for, and their temporary directories are removed.
// Helpers never sleep to wait: they poll a condition (the server answers and
// reports our process id, the cluster converged, ...) until a bounded
// deadline (10 s for a server to answer, 30 s for a cluster to converge),
// and on timeout fail the test with the tail of the server's log.
//
// # Ports
//
// Servers listen on ports picked by the kernel: the helper listens on
// 127.0.0.1:0, reads the port, closes the listener and starts the server on
// that port. This leaves a small race: between the close and the server's
// bind, another process may take the port. The helper detects it (the server
// exits and its log says "Address already in use") and retries with a fresh
// port, up to 5 attempts. It also checks that the process answering on the
// port is the one it started (the pid reported by INFO or stats), so a
// stranger that grabbed the port is never mistaken for our server. Restart
// reuses the same port so that addresses held by the code under test stay
// valid; a stranger taking the port while the server is down fails the test.
// Code under test that can accept a listener should use FreeLoopbackListener
// instead, which has no race at all.
//
// # Binaries
//
// The binaries come from the system: redis-server and redis-cli (Debian
// packages redis-server and redis-tools, Redis 7.0 or newer, built with TLS)
// and memcached. RequireBinary skips a test when one is missing, except under
// CI (env CI set), where it fails the test instead.
//
// # Connection accounting
//
// Each server keeps one admin connection that testenv opens at start and
// reuses for its own queries (INFO, stats, ACL SETUSER, Get/Set on
// memcached). Reading a counter therefore never changes it: compare two
// readings of TotalConnections to assert that the code under test opened no
// connection to the cache. ConnectedClients excludes the admin connection.
package testenv
