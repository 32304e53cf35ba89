package layer

import (
	"context"
	"fmt"
	golog "log"
	"math"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
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
	// OperationLog, when not nil, gets a debug line "FUSE operation" for
	// every operation on the tree, with its kind and path ([fuse]
	// log_fuse_operations; the paths reveal the image's file names).
	OperationLog *log.Entry
	// OnOpen, when not nil, is called with the path ("/a/b") of every
	// file opened ([prefetch] record_until_file).
	OnOpen func(path string)
	// Local, when not nil, lets the first read of a small file also
	// hand the kernel the rest of the file when it is all local (see
	// Read): one READ request per file instead of two or more. Nil while
	// demand reads are being recorded, which would miss what the kernel
	// then reads from its page cache.
	Local LocalReader
	// Passthrough, when not nil, serves local files through FUSE
	// passthrough once ProbePassthrough accepted the mount; every open is
	// then answered (no FUSE no_open). A layer with few large files
	// ignores it (see passthroughWorth).
	Passthrough *Passthrough
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
	// DefaultCacheTimeout is how long the kernel may cache entries,
	// failed lookups and attributes when MountConfig leaves it at 0:
	// layers never change.
	DefaultCacheTimeout = 24 * time.Hour
	// foreverTimeout stands for a negative timeout: the kernel clamps it
	// to the longest it can keep an entry.
	foreverTimeout = time.Duration(math.MaxInt64)
)

// tree is what all nodes of one layer share.
type tree struct {
	r             Reader
	readCtx       context.Context // of every FetchAt: never cancelled
	disableXattrs bool
	opLog         *log.Entry   // Options.OperationLog
	onOpen        func(string) // Options.OnOpen
	files         uint64       // live nodes
	blocks        uint64       // 4 KiB blocks of file data
	pass          *passthrough // Options.Passthrough; nil: off
	closed        bool         // unmounted: no new passthrough copies (BackingFiles.mu)
	// noXattrs: no node has an extended attribute to report (see
	// Getxattr).
	noXattrs bool
	local    LocalReader // Options.Local
	// storeBufs holds buffers of StoreMaxBytes for storeRest.
	storeBufs sync.Pool
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
	t := &tree{r: r, readCtx: context.Background(), disableXattrs: opts.DisableXattrs, opLog: opts.OperationLog, onOpen: opts.OnOpen, files: b.files, blocks: b.blocks,
		noXattrs: !mayHaveXattrs(toc.Entries, opts.DisableXattrs), local: opts.Local}
	if p := opts.Passthrough; p != nil {
		if p.Files == nil || p.Local == nil {
			return nil, fmt.Errorf("layer passthrough without a store or a local reader: %w", errdefs.ErrInvalidArgument)
		}
		if passthroughWorth(toc.Entries) {
			t.pass = &passthrough{Passthrough: *p}
		}
	}
	return &inode{n: b.root, t: t}, nil
}

// MountConfig is what may be tuned about how a layer is mounted ([fuse]
// and debug in the configuration).
type MountConfig struct {
	// AttrTimeout, EntryTimeout and NegativeTimeout are how long the
	// kernel caches attributes, name lookups and failed lookups: 0 takes
	// DefaultCacheTimeout, a negative value as long as the kernel can
	// (what upstream's negative values come to).
	AttrTimeout, EntryTimeout, NegativeTimeout time.Duration
	// DebugLog, when not nil, gets go-fuse's trace of every request and
	// reply, one debug line each ("debug" in the configuration).
	DebugLog *log.Entry
}

// MountOptions returns the go-fuse options layers are mounted with:
// read-only, allow_other with kernel permission checks, setuid binaries and
// device nodes honoured as on a containerd-unpacked snapshot, the kernel
// cache timeouts of c, replies written without splice, modes passed through as they are (0 stays 0), source
// "soci" and type "fuse.rawBridge". Each call returns a fresh value.
func MountOptions(c MountConfig) *fusefs.Options {
	attr, entry, negative := cacheTimeout(c.AttrTimeout), cacheTimeout(c.EntryTimeout), cacheTimeout(c.NegativeTimeout)
	o := &fusefs.Options{
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
			// Reads answer with bytes in memory, which go-fuse would
			// first try to splice (a pipe, a header written into it,
			// then drained to /dev/null when the data turns out not to
			// come from a file): several system calls per read for
			// nothing.
			DisableSplice: true,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		NullPermissions: true,
	}
	if c.DebugLog != nil {
		// The trace is written by the fuse server (MountOptions) and
		// the node bridge (Options) through loggers of their own.
		l := golog.New(debugWriter{c.DebugLog}, "", 0)
		o.MountOptions.Debug, o.MountOptions.Logger = true, l
		o.Logger = l
	}
	return o
}

func cacheTimeout(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultCacheTimeout
	case d < 0:
		return foreverTimeout
	}
	return d
}

// debugWriter turns each line go-fuse's logger writes into a debug entry.
type debugWriter struct{ e *log.Entry }

func (w debugWriter) Write(p []byte) (int, error) {
	w.e.Debug(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
