package service

import (
	"time"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs/background"
	"github.com/fastsoci/soci-snapshotter/fs/linkrate"
	"github.com/fastsoci/soci-snapshotter/internal/idlemem"
)

// Background fetch settings that the configuration can only make less
// polite. The [background_fetch] keys are read as upper bounds:
//
//   - disable turns the fetcher off.
//   - silence_period_msec delays a layer's first fetch after its mount, at
//     most [limits] background_max_delay_msec (default 0: the walk starts
//     at the mount and uses the link while the container is created; it
//     yields to mounts and reads by stopping its chunks in flight).
//   - on a link measured faster than [limits] background_fast_link_mbit
//     (the walk's CPU, not the link, limits it), a mount leaves a quiet
//     period behind it (backgroundMountQuiet), as a demand read leaves
//     backgroundQuiet: the walk does not compete with the container's start
//     for the CPU.
//   - fetch_period_msec is not a pace between fetches (demand reads, not a
//     timer, make the fetcher yield); it is the pause after a failed chunk,
//     at most maxBackgroundRetryWait.
//   - max_queue_size bounds the layers waiting to start (negative:
//     unbounded), drop_policy says which one is dropped when it is full; a
//     dropped layer stays lazily loaded.
//   - emit_metric_period_sec is unused: Prometheus scrapes when it wants.
const (
	backgroundWorkers      = 4
	backgroundChunkSize    = 8 << 20
	maxBackgroundRetryWait = 500 * time.Millisecond
	// backgroundQuiet: a chunk starts only once demand fetches (reads
	// waiting for the registry, read-ahead) have been over for this long.
	backgroundQuiet = time.Second
	// backgroundMountQuiet: on a fast link (background_fast_link_mbit) a
	// chunk starts only once mounts have been over for this long: the
	// container is created and started in that time (0.3-1 s on an idle
	// 2-core node, more on a busy one).
	backgroundMountQuiet = 3 * time.Second
	// backgroundEagerBytes: a layer of at most this many compressed bytes
	// is walked without yielding to reads (background.Options.EagerBytes):
	// about 1.3 s of a 200 Mbit/s link.
	backgroundEagerBytes = 32 << 20
	// backgroundEagerTime: ... and crosses the link, at the rate
	// fs/linkrate measures (the fastest recent response body, close to the
	// link's own rate), within this (background.Options.EagerTime): on
	// the bench's 200 Mbit/s link every layer of 32 MiB or less does, on
	// a link several times slower none does.
	backgroundEagerTime = 3 * time.Second
)

// backgroundOptions maps [background_fetch] onto the scheduler's options;
// nil when it is disabled.
func backgroundOptions(cfg *config.Config, link *linkrate.Meter) *background.Options {
	b := cfg.BackgroundFetch
	if b.Disable {
		return nil
	}
	var fast func() bool
	var rate func() (float64, bool)
	if link != nil {
		rate = link.Rate
		if mbit := cfg.Limits.BackgroundFastLinkMbit; mbit > 0 {
			bytesPerSecond := float64(mbit) * 1e6 / 8
			fast = func() bool { return link.Faster(bytesPerSecond) }
		}
	}
	return &background.Options{
		FastLink:     fast,
		LinkRate:     rate,
		MountQuiet:   backgroundMountQuiet,
		Workers:      backgroundWorkers,
		ChunkSize:    backgroundChunkSize,
		Delay:        min(max(b.SilencePeriodMsec.Duration(), 0), cfg.Limits.BackgroundMaxDelayMsec.Duration()),
		Quiet:        backgroundQuiet,
		EagerBytes:   backgroundEagerBytes,
		EagerTime:    backgroundEagerTime,
		RetryWait:    min(b.FetchPeriodMsec.Duration(), maxBackgroundRetryWait),
		FetchTimeout: spanFetchTimeout(cfg),
		MaxQueue:     max(b.MaxQueueSize, 0),
		DropOldest:   b.DropPolicy == config.DropOldest,
		// Once no layer is being walked the walks' chunk and span buffers
		// are garbage; without allocation no collection would come for up
		// to two minutes, and the scavenger returns the freed pages
		// slowly: collect and return them now, so that a node at rest
		// holds its live data (the trees of mounted layers), not the
		// heap of its last walk.
		OnIdle: idlemem.ReturnFree,
	}
}
