// Package client is the laptop side of cachetun: profiles, the session
// supervisor (dial, transport fallback, reconnect with backoff), one local
// listener per node of the target, and cache-protocol rewriting so that
// Redis Cluster redirects and memcached discovery name local ports.
//
// A local connection accepted while the session is down waits up to
// Options.WaitForSession for the next session instead of failing at once.
//
// The lifecycle (client.go), as the gateway's (server/run.go):
//
//	New ──► Run(ctx) ──► dial, authenticate ──► listen ──► Ready() closed
//	 │                                                      │
//	 builds and validates:           serve: control stream, accept loops,
//	 no dial, no listener,           local connections; a lost session is
//	 no goroutine                    redialled with backoff, ports stay open
//	                                                        │
//	  ctx ends, or a final verdict (revoked) ─────────────► listeners and
//	                                                        every session Run
//	                                                        opened closed
//	                                                        │
//	            Run returns, Done() closed ◄── every goroutine it started stopped
//
// A Group runs the clients of one connect of several gateways: up when
// all are, ended when the first ends. Errors meant for a person are
// *control.Error values (message, hint, whose fix).
package client
