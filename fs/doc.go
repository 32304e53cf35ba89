// Package fs is step 4 of the flow in DESIGN.md: it mounts, checks and
// unmounts the lazily loaded filesystem of one layer. It satisfies the
// snapshotter's Mounter interface.
//
// Lazy loading is not wired in yet: every Mount answers "not found", so the
// snapshotter falls back to letting containerd unpack each layer.
package fs
