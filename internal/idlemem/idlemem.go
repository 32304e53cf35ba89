// Package idlemem hands the Go heap's free memory back to the system once
// a process has gone quiet after some work. Without it the runtime keeps
// the pages a burst of calls freed for minutes (its scavenger returns them
// slowly, and down to about the heap goal, not the live heap), so a daemon
// at rest holds the heap of its last burst.
package idlemem

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Options configure a Releaser. Zero fields take the defaults.
type Options struct {
	// Quiet is how long after the last Touch the memory is released
	// (DefaultQuiet).
	Quiet time.Duration
	// MinFree is the free heap (mapped, not yet returned) below which
	// the release is skipped: a collection for less is not worth its CPU
	// (DefaultMinFree). A daemon's collection costs about a millisecond.
	MinFree uint64
	// After is the clock (time.After).
	After func(time.Duration) <-chan time.Time
	// Free reports the heap's free, still mapped bytes (runtime/metrics
	// /memory/classes/heap/free:bytes).
	Free func() uint64
	// Release returns them (ReturnFree); free is what Free reported.
	Release func(free uint64)
	// OnQuiet, if set, runs after every quiet period, before the check of
	// MinFree (ReleaseExecutable: a burst maps code whether or not it
	// leaves garbage).
	OnQuiet func()
	// KeepHeap: only OnQuiet runs after a quiet period; the heap is
	// neither measured nor released (Free, Release and MinFree are
	// unused), for a process that returns its garbage itself when its
	// work ends.
	KeepHeap bool
}

// Defaults of Options.
const (
	DefaultQuiet   = 5 * time.Second
	DefaultMinFree = 256 << 10
)

// Releaser runs Release once the process has been quiet for Quiet after a
// Touch, if at least MinFree bytes are free. It is safe for concurrent
// use.
type Releaser struct {
	opts  Options
	touch chan struct{}
}

// New returns a Releaser; Run drives it.
func New(opts Options) *Releaser {
	if opts.Quiet <= 0 {
		opts.Quiet = DefaultQuiet
	}
	if opts.MinFree == 0 {
		opts.MinFree = DefaultMinFree
	}
	if opts.After == nil {
		opts.After = time.After
	}
	if opts.Free == nil {
		opts.Free = heapFree
	}
	if opts.Release == nil {
		opts.Release = func(uint64) { ReturnFree() }
	}
	return &Releaser{opts: opts, touch: make(chan struct{}, 1)}
}

// Touch records activity: the release waits for Quiet after the last one.
// It never blocks.
func (r *Releaser) Touch() {
	select {
	case r.touch <- struct{}{}:
	default:
	}
}

// Run releases memory after each burst of activity until ctx is done.
func (r *Releaser) Run(ctx context.Context) {
	for {
		select { // wait for activity
		case <-ctx.Done():
			return
		case <-r.touch:
		}
	quiet:
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.touch:
			case <-r.opts.After(r.opts.Quiet):
				break quiet
			}
		}
		if r.opts.OnQuiet != nil {
			r.opts.OnQuiet()
		}
		if r.opts.KeepHeap {
			continue
		}
		if free := r.opts.Free(); free >= r.opts.MinFree {
			r.opts.Release(free)
		}
	}
}

// ReturnFree collects the garbage twice and returns the free heap to the
// system (debug.FreeOSMemory). Twice: the first collection only moves what
// sync.Pools hold (go-fuse's request buffers, gRPC's) to their victim
// caches, the second frees it.
func ReturnFree() {
	runtime.GC()
	debug.FreeOSMemory()
}

const freeMetric = "/memory/classes/heap/free:bytes"

// heapFree is the runtime's free heap memory not yet returned to the
// system.
func heapFree() uint64 {
	s := []metrics.Sample{{Name: freeMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
