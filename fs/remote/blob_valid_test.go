package remote

import (
	"context"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/internal/clocktest"
)

// TestBlobDirectURLValidFor: a storage URL is reused while it was read
// successfully within DirectURLValidFor ([blob] valid_interval), and the
// registry is asked again for a fresh one after that idle time; a negative
// value ([blob] check_always) sends every read through the registry; 0
// reuses the URL until it fails, however long it was idle.
func TestBlobDirectURLValidFor(t *testing.T) {
	for _, tc := range []struct {
		name  string
		valid time.Duration
		// registry blob requests after: the first read (redirected), a
		// read 30 s later, a read 90 s after that.
		want [3]int
	}{
		{"valid_interval 60s", time.Minute, [3]int{1, 1, 2}},
		{"check_always", -1, [3]int{1, 2, 3}},
		{"until it fails", 0, [3]int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newFakeRegistry(t)
			data := blobContent(4 << 10)
			desc := reg.addBlob(data)
			storage := newBlobStorage(t, reg)
			reg.set(func(r *fakeRegistry) { r.storage = storage })
			clock := clocktest.New()
			b := New(Options{DirectURLValidFor: tc.valid, Now: clock.Now}).Blob(reg.ref("app"), desc)
			read := func(step int) {
				t.Helper()
				p := make([]byte, 100)
				if n, err := b.FetchAt(context.Background(), p, 10); n != len(p) || err != nil {
					t.Fatalf("read %d: %d, %v", step, n, err)
				}
				if got := reg.hitCount("blobs"); got != tc.want[step] {
					t.Fatalf("after read %d: registry saw %d blob requests, want %d", step, got, tc.want[step])
				}
			}
			read(0)
			clock.Advance(30 * time.Second)
			read(1) // within the interval of the redirect: storage directly
			clock.Advance(90 * time.Second)
			read(2) // idle past the interval since the last read
			if storage.hitCount() != 3 {
				t.Fatalf("storage saw %d requests, want 3 (every read)", storage.hitCount())
			}
		})
	}
}
