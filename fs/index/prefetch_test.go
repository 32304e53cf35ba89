package index

import (
	"context"
	"testing"
	"testing/synctest"
)

// TestPrefetch: Prefetch brings the index's zTOCs to local disk in the
// background, once per index, and Open then needs no registry.
func TestPrefetch(t *testing.T) {
	// In a bubble, synctest.Wait tells when the background work is done.
	synctest.Test(t, func(t *testing.T) {
		f := newDiscoveryFixture(t)
		s := newStore(t, t.TempDir(), f.reg, false, true)
		ctx := context.Background()
		idx, err := s.Find(ctx, testRef, f.manifest.Digest, "")
		if err != nil {
			t.Fatal(err)
		}
		s.Prefetch(ctx, testRef, idx)
		s.Prefetch(ctx, testRef, idx) // a second call starts nothing
		synctest.Wait()               // the prefetch has ended
		if _, ok := s.readBlob(ctx, f.ztoc.Digest); !ok {
			t.Fatal("zTOC not on local disk once Prefetch's work ended")
		}
		f.reg.mu.Lock()
		f.reg.fail = true
		f.reg.mu.Unlock()
		l, err := s.Open(ctx, testRef, idx, f.layer)
		if err != nil {
			t.Fatalf("Open after Prefetch with the registry down: %v", err)
		}
		l.Close()
		if n := f.reg.count("blob", f.ztoc.Digest); n != 1 {
			t.Errorf("zTOC fetched %d times, want 1", n)
		}
	})
}
