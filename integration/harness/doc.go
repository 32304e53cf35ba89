// Package harness starts the real pieces of a node on loopback, in a private
// directory: an OCI registry, containerd with a proxy_plugins entry for our
// daemon, and the daemon itself. The integration tests, the demo and the
// benchmarks drive them through nerdctl and ctr, as a user would.
package harness
