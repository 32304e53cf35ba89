package remote

import "time"

// Kinds of GET reported to an Observer.
const (
	KindManifest = "manifest" // manifests, indexes and referrers
	KindBlob     = "blob"     // whole small blobs (configs, zTOCs)
	KindRange    = "range"    // range reads of layer blobs
)

// Observer receives the latency (through the last body byte, retries
// included) and the bytes received of each GET.
type Observer interface {
	ObserveGet(kind string, took time.Duration, n int64)
}

func (c *Client) observe(kind string, start time.Time, n int64) {
	if c.opts.Observer != nil {
		c.opts.Observer.ObserveGet(kind, time.Since(start), n)
	}
}
