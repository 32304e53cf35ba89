package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// acquire waits for a request slot (Options.MaxConcurrency) until ctx ends;
// release gives it back.
func (c *Client) acquire(ctx context.Context) (release func(), err error) {
	if c.slots == nil {
		return func() {}, nil
	}
	if err := c.slots.Acquire(ctx, 1); err != nil {
		return nil, fmt.Errorf("wait for one of %d registry request slots (max_concurrency): %w", c.opts.MaxConcurrency, err)
	}
	return func() { c.slots.Release(1) }, nil
}

// holdSlot keeps the request slot that release gives back until resp's
// body is closed.
func holdSlot(resp *http.Response, release func()) {
	resp.Body = &slotBody{ReadCloser: resp.Body, release: release}
}

// slotBody is a response body that releases its request slot on Close.
type slotBody struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (b *slotBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.release)
	return err
}
