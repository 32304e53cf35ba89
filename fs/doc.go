// Package fs is step 4 of the flow in docs/architecture.md: it mounts, checks and
// unmounts the lazily loaded filesystem of one layer, and satisfies the
// snapshotter's Mounter interface. mount.go reads top to bottom as the flow
// of one layer: labels → SOCI index → zTOC → span manager → FUSE tree.
//
// An FS runs in the FUSE host process (package fusehost), which outlives
// the daemon; Mount is idempotent for a layer it already serves, so that a
// restarted daemon restoring its snapshots leaves live mounts alone.
package fs
