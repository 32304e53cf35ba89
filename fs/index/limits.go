package index

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/containerd/log"
)

// Defaults of the Limits fields left zero (the [limits] table's defaults).
const (
	DefaultMaxIndexEntries  = 4096
	DefaultMaxZTOCBytes     = 256 << 20
	DefaultMaxZTOCEntries   = 1 << 20
	DefaultMaxZTOCHeapBytes = 384 << 20
)

// maxIndexBytes bounds a SOCI index (and the config and subject it names):
// registries and our client refuse manifests larger than 4 MiB.
const maxIndexBytes = 4 << 20

// Limits bound what a SOCI index or a zTOC from a registry may make the
// store read, allocate or walk. Data past a bound is refused as a whole.
// Fields left zero take the defaults.
type Limits struct {
	// MaxIndexEntries bounds the entries (layers) of one SOCI index.
	MaxIndexEntries int
	// MaxZTOCBytes bounds one serialized zTOC, and any other artifact an
	// index lists.
	MaxZTOCBytes int64
	// MaxZTOCEntries bounds the file entries of one zTOC.
	MaxZTOCEntries int
	// MaxZTOCHeapBytes bounds the memory one zTOC is estimated to take to
	// decode, convert and load (see checkFlatbuffer), and the sum of the
	// estimates of the loads a Store runs at once (see parseZTOC).
	MaxZTOCHeapBytes int64
}

// withDefaults returns l with zero (or negative) fields set to the defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxIndexEntries <= 0 {
		l.MaxIndexEntries = DefaultMaxIndexEntries
	}
	if l.MaxZTOCBytes <= 0 {
		l.MaxZTOCBytes = DefaultMaxZTOCBytes
	}
	if l.MaxZTOCEntries <= 0 {
		l.MaxZTOCEntries = DefaultMaxZTOCEntries
	}
	if l.MaxZTOCHeapBytes <= 0 {
		l.MaxZTOCHeapBytes = DefaultMaxZTOCHeapBytes
	}
	return l
}

// maxBlobBytes bounds any blob the store reads from its disk.
func (l Limits) maxBlobBytes() int64 { return max(l.MaxZTOCBytes, maxIndexBytes) }

// guard runs fn, which handles registry data, and turns a panic into an
// error logged at Error level with its stack: one hostile image must not
// take down the daemon and every container it serves.
func guard[T any](ctx context.Context, what string, fn func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: internal error: %v", what, r)
			log.G(ctx).WithField("panic", fmt.Sprint(r)).WithField("stack", string(debug.Stack())).
				Error("recovered from a panic while handling registry data; " + what + " failed")
		}
	}()
	return fn()
}

// short quotes s for an error message, cut to a readable length: the
// strings in question come from a registry and may be huge.
func short(s string) string {
	const n = 80
	if len(s) > n {
		return fmt.Sprintf("%q...(%d bytes)", s[:n], len(s))
	}
	return fmt.Sprintf("%q", s)
}
