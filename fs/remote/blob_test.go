package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func blobContent(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// checkReaderAt exercises the io.ReaderAt contract of FetchAt against data.
func checkReaderAt(t *testing.T, b *Blob, data []byte) {
	t.Helper()
	ctx := context.Background()
	size := int64(len(data))
	for _, tc := range []struct {
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}{
		{0, 10, 10, false},
		{100, 1000, 1000, false},
		{size - 10, 10, 10, false},
		{size - 10, 50, 10, true},
		{size, 10, 0, true},
		{size + 5, 10, 0, true},
		{7, 0, 0, false},
	} {
		p := make([]byte, tc.n)
		n, err := b.FetchAt(ctx, p, tc.off)
		if n != tc.wantN || (err == io.EOF) != tc.wantEOF || (err != nil && err != io.EOF) {
			t.Fatalf("FetchAt(%d bytes at %d) = %d, %v; want %d, eof %v", tc.n, tc.off, n, err, tc.wantN, tc.wantEOF)
		}
		if end := tc.off + int64(n); n > 0 && !bytes.Equal(p[:n], data[tc.off:end]) {
			t.Fatalf("FetchAt(%d bytes at %d): wrong bytes", tc.n, tc.off)
		}
	}
}

func TestBlobFetchAtRanges(t *testing.T) {
	reg := newFakeRegistry(t)
	data := blobContent(64 << 10)
	desc := reg.addBlob(data)
	c := New(Options{})
	checkReaderAt(t, c.Blob(reg.ref("app"), desc), data)
	last := reg.headers[len(reg.headers)-1].Get("Range")
	if want := fmt.Sprintf("bytes=%d-%d", len(data)-10, len(data)-1); last != want {
		t.Fatalf("last Range %q, want %q", last, want)
	}
}

func TestBlobFetchAtRangeIgnored(t *testing.T) {
	reg := newFakeRegistry(t)
	data := blobContent(10000)
	desc := reg.addBlob(data)
	reg.set(func(r *fakeRegistry) { r.ignoreRange = true })
	checkReaderAt(t, New(Options{}).Blob(reg.ref("app"), desc), data)
}

func TestBlobFetchAtUnknownSize(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		reg := newFakeRegistry(t)
		data := blobContent(5000)
		desc := reg.addBlob(data)
		desc.Size = 0
		reg.set(func(r *fakeRegistry) { r.ignoreRange = ignore })
		checkReaderAt(t, New(Options{}).Blob(reg.ref("app"), desc), data)
	}
}

func TestBlobFetchAtErrors(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob(blobContent(100))
	c := New(Options{})
	ctx := context.Background()
	p := make([]byte, 10)
	if _, err := c.Blob(reg.ref("app"), desc).FetchAt(ctx, p, -1); !errdefs.IsInvalidArgument(err) {
		t.Errorf("negative offset: %v", err)
	}
	absent := ocispec.Descriptor{Digest: desc.Digest[:len(desc.Digest)-1] + "0", Size: 100}
	_, err := c.Blob(reg.ref("app"), absent).FetchAt(ctx, p, 0)
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "/v2/app/blobs/") {
		t.Errorf("absent blob: %v", err)
	}
	// A registry whose blob is shorter than the descriptor says.
	long := desc
	long.Size = 200
	if _, err := c.Blob(reg.ref("app"), long).FetchAt(ctx, make([]byte, 50), 80); err == nil || err == io.EOF {
		t.Errorf("truncated blob: %v", err)
	}
}

func TestBlobRedirectRemembered(t *testing.T) {
	reg := newFakeRegistry(t)
	data := blobContent(32 << 10)
	desc := reg.addBlob(data)
	storage := newBlobStorage(t, reg)
	reg.set(func(r *fakeRegistry) { r.storage = storage; r.user, r.pass = "bob", "pw" })
	c := New(Options{Credentials: func(string) (string, string, error) { return "bob", "pw", nil }})
	b := c.Blob(reg.ref("app"), desc)

	checkReaderAt(t, b, data)
	if got := reg.hitCount("blobs"); got != 2 { // challenged, then redirected
		t.Fatalf("registry saw %d blob requests, want 2", got)
	}
	if storage.hitCount() != 4 { // every range read that needed the network
		t.Fatalf("storage saw %d requests", storage.hitCount())
	}
	storage.mu.Lock()
	sawAuth, sig := storage.sawAuth, storage.sawQuery.Get("sig")
	storage.expired = true
	storage.mu.Unlock()
	if sawAuth || sig != "s3cr3t" {
		t.Fatalf("storage got Authorization %v, sig %q", sawAuth, sig)
	}

	// An expired URL sends the next read back to the registry, which
	// redirects again; the new URL fails too, so the error is storage's.
	_, err := b.FetchAt(context.Background(), make([]byte, 10), 0)
	if !errdefs.IsPermissionDenied(err) || strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("expired storage: %v", err)
	}
	if got := reg.hitCount("blobs"); got != 3 {
		t.Fatalf("registry saw %d blob requests, want 3", got)
	}
	storage.mu.Lock()
	storage.expired = false
	storage.mu.Unlock()
	checkReaderAt(t, b, data)
	if got := reg.hitCount("blobs"); got != 4 {
		t.Fatalf("registry saw %d blob requests, want 4", got)
	}
}

func TestBlobConcurrentReads(t *testing.T) {
	reg := newFakeRegistry(t)
	data := blobContent(256 << 10)
	desc := reg.addBlob(data)
	reg.set(func(r *fakeRegistry) { r.storage = newBlobStorage(t, reg) })
	b := New(Options{}).Blob(reg.ref("app"), desc)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			off := int64(i) * 16 << 10
			p := make([]byte, 16<<10)
			if _, err := b.FetchAt(context.Background(), p, off); err != nil {
				errs <- err
			} else if !bytes.Equal(p, data[off:off+int64(len(p))]) {
				errs <- fmt.Errorf("wrong bytes at %d", off)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestTimeoutBoundsHangingRegistry(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob(blobContent(100))
	dgst, _ := testManifest(t, reg)
	reg.set(func(r *fakeRegistry) { r.hang = true })
	c := New(Options{Timeout: 200 * time.Millisecond})
	ctx := context.Background()
	ops := map[string]func() error{
		"manifest": func() error { _, _, err := c.FetchManifest(ctx, reg.ref("app"), dgst); return err },
		"blob":     func() error { _, err := c.FetchBlob(ctx, reg.ref("app"), desc); return err },
		"referrers": func() error {
			_, err := c.Referrers(ctx, reg.ref("app"), dgst, "")
			return err
		},
		"range": func() error { _, err := c.Blob(reg.ref("app"), desc).FetchAt(ctx, make([]byte, 10), 0); return err },
	}
	for name, op := range ops {
		start := time.Now()
		err := op()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: %v", name, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s took %s", name, d)
		}
	}
}

// trackedTimers makes the watchdogs' timers (real ones) and tells how many
// are running.
type trackedTimers struct {
	mu     sync.Mutex
	timers []*trackedTimer
}

type trackedTimer struct {
	t       *time.Timer
	running atomic.Bool
}

func (tt *trackedTimers) afterFunc(d time.Duration, f func()) stopTimer {
	t := &trackedTimer{}
	t.running.Store(true)
	t.t = time.AfterFunc(d, func() { t.running.Store(false); f() })
	tt.mu.Lock()
	tt.timers = append(tt.timers, t)
	tt.mu.Unlock()
	return t
}

func (t *trackedTimer) Stop() bool { t.running.Store(false); return t.t.Stop() }

func (t *trackedTimer) Reset(d time.Duration) bool { t.running.Store(true); return t.t.Reset(d) }

func (tt *trackedTimers) armed() int {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	n := 0
	for _, t := range tt.timers {
		if t.running.Load() {
			n++
		}
	}
	return n
}

func TestTimeoutBoundsStalledBody(t *testing.T) {
	reg := newFakeRegistry(t)
	desc := reg.addBlob(blobContent(1 << 20))
	reg.set(func(r *fakeRegistry) { r.stallBody = true })
	c := New(Options{Timeout: 200 * time.Millisecond})
	timers := &trackedTimers{}
	c.afterFunc = timers.afterFunc
	ctx := context.Background()
	start := time.Now()
	_, err := c.Blob(reg.ref("app"), desc).FetchAt(ctx, make([]byte, 1<<20), 0)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("range read of a stalled body: %v after %s", err, time.Since(start))
	}
	// The read's watchdog ends with it.
	if n := timers.armed(); n != 0 {
		t.Fatalf("%d watchdogs run after the read returned", n)
	}
}

// bodies records what a BodyObserver is told.
type bodies struct {
	mu    sync.Mutex
	kinds []string
	bytes []int64
}

func (b *bodies) ObserveGet(string, time.Duration, int64) {}

func (b *bodies) ObserveBody(kind string, took time.Duration, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if took <= 0 {
		panic("body took no time")
	}
	b.kinds, b.bytes = append(b.kinds, kind), append(b.bytes, n)
}

func TestBodyObserver(t *testing.T) {
	reg := newFakeRegistry(t)
	data := blobContent(64 << 10)
	desc := reg.addBlob(data)
	obs := &bodies{}
	c := New(Options{Observer: obs})
	ctx := context.Background()
	if _, err := c.Blob(reg.ref("app"), desc).FetchAt(ctx, make([]byte, 1000), 100); err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchBlob(ctx, reg.ref("app"), desc); err != nil {
		t.Fatal(err)
	}
	// A read that fails is not a body that arrived.
	missing := desc
	missing.Digest = digest.Digest("sha256:" + strings.Repeat("0", 64))
	if _, err := c.Blob(reg.ref("app"), missing).FetchAt(ctx, make([]byte, 10), 0); err == nil {
		t.Fatal("read of a missing blob succeeded")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if fmt.Sprint(obs.kinds, obs.bytes) != fmt.Sprint([]string{KindRange, KindBlob}, []int64{1000, int64(len(data))}) {
		t.Errorf("bodies observed: %v %v, want a range of 1000 bytes, then the whole blob", obs.kinds, obs.bytes)
	}
}
