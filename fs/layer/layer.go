package layer

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Reader reads the layer's uncompressed tar stream; it is satisfied by the
// span manager. FetchAt follows the io.ReaderAt contract.
type Reader interface {
	FetchAt(ctx context.Context, p []byte, off int64) (int, error)
}

// Options tune the tree of one layer.
type Options struct {
	// DisableXattrs mirrors the zTOC annotation
	// com.amazon.soci.disable-xattrs: "true": the layer reports no
	// extended attributes, except the overlay opaque marker.
	DisableXattrs bool
	// MaxDepth bounds the directory levels of the tree (the components
	// of any path); 0 takes DefaultMaxDepth. Deeper entries fail NewRoot.
	MaxDepth int
}

// DefaultMaxDepth is the default of Options.MaxDepth (limits.max_tree_depth).
const DefaultMaxDepth = 1024

// FUSE naming and caching of layer mounts.
const (
	// fuseName is go-fuse's default name for a NodeFS (rawBridge.String),
	// set explicitly so the mount type stays "fuse.rawBridge", which
	// nerdctl's tests count, whatever go-fuse's default becomes.
	fuseName = "rawBridge"
	// fuseSource is the mount source shown in the mount table.
	fuseSource = "soci"
	// cacheTimeout is how long the kernel may cache entries, negative
	// lookups and attributes: layers never change.
	cacheTimeout = 24 * time.Hour
)

// tree is what all nodes of one layer share.
type tree struct {
	r             Reader
	disableXattrs bool
	files         uint64 // live nodes
	blocks        uint64 // 4 KiB blocks of file data
}

// NewRoot validates toc and builds the whole tree of the layer in memory:
// no per-entry I/O, no copies of the TOC's strings or xattr maps, which the
// tree keeps referring to (toc must not be modified afterwards). Entries
// apply in order as containerd's overlay applier applies the tar stream:
// later entries replace earlier ones of the same name (directories merge),
// missing parents are created 0755 root:root, whiteouts become overlay
// whiteouts. Paths deeper than opts.MaxDepth, and more parent directories
// without entries than entries plus MaxDepth, are refused. Errors wrap
// errdefs.ErrInvalidArgument.
//
// The returned root is for one mount only (go-fuse embeds state in it).
func NewRoot(toc TOC, r Reader, opts Options) (fusefs.InodeEmbedder, error) {
	if r == nil {
		return nil, fmt.Errorf("layer tree without a reader: %w", errdefs.ErrInvalidArgument)
	}
	b := newBuilder(len(toc.Entries), opts.MaxDepth)
	if err := b.build(toc.Entries); err != nil {
		return nil, err
	}
	t := &tree{r: r, disableXattrs: opts.DisableXattrs, files: b.files, blocks: b.blocks}
	return &inode{n: b.root, t: t}, nil
}

// MountOptions returns the go-fuse options layers are mounted with:
// read-only, allow_other with kernel permission checks, setuid binaries and
// device nodes honoured as on a containerd-unpacked snapshot, long kernel
// cache timeouts, modes passed through as they are (0 stays 0), source
// "soci" and type "fuse.rawBridge". Each call returns a fresh value the
// caller may adjust (Debug, Logger).
func MountOptions() *fusefs.Options {
	timeout := cacheTimeout
	return &fusefs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther: true,
			FsName:     fuseSource,
			Name:       fuseName,
			// The kernel checks permissions against the layer's modes
			// and owners, as on an unpacked layer.
			Options: []string{"ro", "suid", "dev", "default_permissions"},
			// Mount with mount(2) when root; fusermount otherwise.
			DirectMount:      true,
			DirectMountFlags: syscall.MS_RDONLY,
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true,
	}
}
