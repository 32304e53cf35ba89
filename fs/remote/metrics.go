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

// BodyObserver is an Observer that also receives, for each blob GET whose
// body arrived whole, how long the body took from the response's headers to
// its last byte: the link's rate, without the round trips and the
// registry's time to answer.
type BodyObserver interface {
	ObserveBody(kind string, took time.Duration, n int64)
}

func (c *Client) observe(kind string, start time.Time, n int64) {
	if c.opts.Observer != nil {
		c.opts.Observer.ObserveGet(kind, time.Since(start), n)
	}
}

// observeBody reports a body that started arriving at start, if the
// Observer is a BodyObserver and the body arrived whole (err nil).
func (c *Client) observeBody(kind string, start time.Time, n int, err error) {
	if o, ok := c.opts.Observer.(BodyObserver); ok && err == nil {
		o.ObserveBody(kind, time.Since(start), int64(n))
	}
}
