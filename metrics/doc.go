// Package metrics is the daemon's Prometheus instrumentation (docs/architecture.md;
// operators): one registry per service, handles passed down to fs, span,
// remote and the background scheduler through their Options. There are no
// package-level registries or init() registrations.
package metrics
