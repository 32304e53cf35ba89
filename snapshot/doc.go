// Package snapshot is step 1 of the flow in docs/architecture.md: the containerd
// snapshotter that decides, layer by layer, whether a layer is served lazily
// or unpacked by containerd.
//
// Snapshots live on overlayfs. Their metadata is kept in containerd's snapshot
// metadata store (metadata.db under the root) and their data in
// snapshots/<id>/fs, with snapshots/<id>/work as overlayfs's work directory
// for active snapshots.
//
// The remote-snapshot protocol: while unpacking an image, containerd calls
// Prepare for each layer with the label containerd.io/snapshot.ref naming the
// committed snapshot it wants (the layer's chain ID). If a Mounter is
// configured, the snapshotter asks it to mount the layer at the new snapshot's
// fs directory. When that works, the snapshot is committed under the
// requested name, marked with RemoteLabel, and Prepare answers with an error
// wrapping errdefs.ErrAlreadyExists: containerd then neither downloads nor
// applies the layer. When the Mounter cannot serve the layer (no SOCI index,
// or any other failure), Prepare returns ordinary mounts and containerd
// unpacks the layer itself.
//
// On start, New first sweeps what a crash may have left (dead FUSE mounts,
// snapshot directories without snapshot; see docs/architecture.md, "Crash
// consistency"), then mounts again, from the labels stored with each remote
// snapshot and from local state only (the Mounter's ctx is marked by
// mountctx.WithLocalOnly), those whose mount is no longer served. The
// Mounter is the FUSE host, which outlives the daemon: after a restart of
// the daemon its layers still pass their check and are left alone; only
// after the host itself ended are they mounted again. A layer the Mounter
// declines (not found, including not restorable from local state, or a
// failed precondition such as a zTOC found bad) is reported by name and
// skipped; other failures stop start-up unless
// allow_invalid_mounts_on_restart is set. Whenever mounts are handed out
// for a snapshot on top of remote layers, each of those layers is checked
// and, if it died, mounted again (then with the registry if need be).
package snapshot
