package crash

// The named points placed in the code. docs/architecture.md ("Crash
// consistency") has the same list with the state each one leaves; the
// crash integration test drives every entry of Points.
const (
	// RecordBeforeCommit: a new snapshot's directory has its final name
	// but the metadata transaction creating the snapshot is not committed.
	RecordBeforeCommit = "snapshot.record.before-commit"
	// PrepareAfterRecord: a remote Prepare's active snapshot is recorded,
	// nothing mounted yet.
	PrepareAfterRecord = "snapshot.prepare.after-record"
	// PrepareAfterMount: the layer is mounted on the active snapshot's fs
	// directory, not committed.
	PrepareAfterMount = "snapshot.prepare.after-mount"
	// PrepareAfterCommit: the layer is committed as a remote snapshot;
	// containerd has not heard so.
	PrepareAfterCommit = "snapshot.prepare.after-commit"
	// CommitBeforeCommit: an unpacked layer is measured, its commit
	// transaction not begun.
	CommitBeforeCommit = "snapshot.commit.before-commit"
	// CommitAfterCommit: an unpacked layer is committed; containerd has not
	// heard so.
	CommitAfterCommit = "snapshot.commit.after-commit"
	// RemoveAfterRecord: a snapshot's record is removed, its directory
	// (and mount) not yet.
	RemoveAfterRecord = "snapshot.remove.after-record"
	// RemoveBeforeRelease: the directory is deleted, the layer's data
	// (spans, zTOC, index) not released.
	RemoveBeforeRelease = "snapshot.remove.before-release"
	// CachePutBeforeRename: a span is written to the process's staging
	// directory, not renamed into place.
	CachePutBeforeRename = "cache.put.before-rename"
	// CacheRemoveBeforeDelete: a layer's spans are moved into the staging
	// directory, not deleted.
	CacheRemoveBeforeDelete = "cache.remove.before-delete"
	// IndexBlobBeforeRename: a SOCI index blob is written to the store's
	// staging directory, not renamed into place.
	IndexBlobBeforeRename = "index.blob.before-rename"
	// ZTOCBeforeRename: the same for a zTOC.
	ZTOCBeforeRename = "index.ztoc.before-rename"
	// ChoiceBeforeRename: the same for a manifest -> index record.
	ChoiceBeforeRename = "index.choice.before-rename"
	// PullAfterUnpack: parallel pull has unpacked a layer into the
	// process's staging directory, not checked nor moved it.
	PullAfterUnpack = "pull.layer.after-unpack"
	// PullAfterMove: the unpacked layer is moved into its active
	// snapshot, not committed.
	PullAfterMove = "snapshot.pull.after-move"
)

// Points returns every named point, in the order of the architecture
// page's table.
func Points() []string {
	return []string{
		RecordBeforeCommit, PrepareAfterRecord, PrepareAfterMount, PrepareAfterCommit,
		CommitBeforeCommit, CommitAfterCommit, RemoveAfterRecord, RemoveBeforeRelease,
		CachePutBeforeRename, CacheRemoveBeforeDelete,
		IndexBlobBeforeRename, ZTOCBeforeRename, ChoiceBeforeRename,
		PullAfterUnpack, PullAfterMove,
	}
}
