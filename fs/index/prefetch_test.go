package index

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
		if s.ZTOCsLocal(idx.Digest) != nil {
			t.Error("ZTOCsLocal has a channel before Prefetch")
		}
		done := s.Prefetch(ctx, testRef, idx)
		if again := s.Prefetch(ctx, testRef, idx); again != nil { // a second call starts nothing
			t.Error("a second Prefetch of the index returned a channel")
		}
		local := s.ZTOCsLocal(idx.Digest) // what a layer's prefetch of spans waits for
		if local == nil {
			t.Fatal("ZTOCsLocal has no channel while Prefetch runs")
		}
		synctest.Wait() // the prefetch has ended
		for name, ch := range map[string]<-chan struct{}{"Prefetch's": done, "ZTOCsLocal's": local} {
			select {
			case <-ch:
			default:
				t.Errorf("%s channel still open once the work ended", name)
			}
		}
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

// orderRegistry is a fakeRegistry whose blob fetches are recorded in the
// order they start and each wait for release.
type orderRegistry struct {
	*fakeRegistry
	mu      sync.Mutex
	started []digest.Digest
	release chan struct{}
}

func (r *orderRegistry) FetchBlob(ctx context.Context, ref string, desc ocispec.Descriptor) ([]byte, error) {
	r.mu.Lock()
	r.started = append(r.started, desc.Digest)
	r.mu.Unlock()
	<-r.release
	return r.fakeRegistry.FetchBlob(ctx, ref, desc)
}

func (r *orderRegistry) startedSoFar() []digest.Digest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.started)
}

// TestPrefetchInIndexOrder: Prefetch downloads prefetchParallel zTOCs at
// once, in index order (the order containerd mounts the layers), so that
// the zTOC of the next mount does not share the link with all the others.
func TestPrefetchInIndexOrder(t *testing.T) {
	// In a bubble, synctest.Wait tells when the downloads are blocked.
	synctest.Test(t, func(t *testing.T) {
		reg := &orderRegistry{fakeRegistry: newFakeRegistry(), release: make(chan struct{})}
		s := newStore(t, t.TempDir(), reg, false, true)
		idx := &Index{Digest: digest.FromString("index")}
		for i := range 5 {
			desc := reg.putBlob([]byte(fmt.Sprintf("ztoc %d", i)))
			idx.ztocList = append(idx.ztocList, desc)
		}
		ended := s.Prefetch(context.Background(), testRef, idx)
		for done := 0; done < len(idx.ztocList); done++ {
			synctest.Wait()
			started := reg.startedSoFar()
			want := min(done+prefetchParallel, len(idx.ztocList))
			if len(started) != want {
				t.Fatalf("%d downloads started after %d ended, want %d", len(started), done, want)
			}
			// The first `want` zTOCs of the index, in any order (two
			// workers race for the same moment).
			for _, d := range started {
				if !slices.ContainsFunc(idx.ztocList[:want], func(desc ocispec.Descriptor) bool { return desc.Digest == d }) {
					t.Fatalf("started %v after %d ended: %s is not among the first %d of the index", started, done, d, want)
				}
			}
			select {
			case <-ended:
				t.Fatalf("Prefetch's channel closed with %d of %d downloads ended", done, len(idx.ztocList))
			default:
			}
			reg.release <- struct{}{}
		}
		synctest.Wait()
		select {
		case <-ended:
		default:
			t.Error("Prefetch's channel still open once every download ended")
		}
	})
}
