// Package fs is step 4 of the flow in docs/architecture.md: it mounts, checks and
// unmounts the lazily loaded filesystem of one layer, and satisfies the
// snapshotter's Mounter interface. mount.go reads top to bottom as the flow
// of one layer: labels → SOCI index → zTOC → span manager → FUSE tree.
package fs
