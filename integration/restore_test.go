package integration

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// blackhole accepts TCP connections and never answers: a registry that
// hangs, worse for a client than one that refuses.
type blackhole struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func startBlackhole(t *testing.T, addr string) *blackhole {
	t.Helper()
	var (
		ln  net.Listener
		err error
	)
	// The registry's port may linger for a moment after it stopped.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen on the registry's address %s: %v", addr, err)
	}
	b := &blackhole{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(b.close)
	return b
}

// accepted reports how many connections the blackhole has taken.
func (b *blackhole) accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

func (b *blackhole) close() {
	b.ln.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
}

// TestRestoreUnreachableRegistry: the daemon is killed (as a crash would;
// its FUSE mounts die with it) and started again while the registry
// accepts connections but never answers. Start-up restores every remote
// snapshot from local state without waiting for the registry: it takes
// less than the mount timeout (a restore that waited would take at least
// that), the layers are mounted again, except one whose zTOC was lost,
// which is reported by name and skipped; the files read before are read
// again from the cache, and a container of an image pulled whole before
// starts.
func TestRestoreUnreachableRegistry(t *testing.T) {
	const mountTimeout = 15 * time.Second
	e := startEnv(t, "mount_timeout_sec = "+strconv.Itoa(int(mountTimeout/time.Second))+"\n"+defaultDaemonConfig)
	ctx := testContext(t, 4*time.Minute)
	lazy := newLayeredImage()
	lazyRef := pushV2(t, e, "restore/lazy:latest", buildImage(t, lazy.spec), sociimage.Options{SpanSize: 1 << 20})
	checkSums(t, runSums(t, ctx, e, lazyRef, lazy.paths), lazy.want)
	// An image without SOCI index is unpacked whole: fully local.
	local := crashImage(99)
	localRef := pushImage(t, e.Registry.Host, "restore/local:latest", local.spec)
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", localRef); err != nil {
		t.Fatal(err)
	}
	// A lazily pulled image whose second layer's zTOC is then lost from
	// the index store: that snapshot is not restorable from local state,
	// and fetching the zTOC again would wait for the registry.
	stale := crashImage(98)
	built := buildImage(t, stale.spec)
	staleRef := e.Registry.Host + "/restore/stale:latest"
	_, staleIdx, err := sociimage.PushV2(ctx, staleRef, built, sociimage.Options{SpanSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", staleRef); err != nil {
		t.Fatal(err)
	}
	lost := staleIdx.ZTOCByLayer[built.LayerDescs[1].Digest]
	if err := os.Remove(filepath.Join(e.Daemon.Root, "fs", "index", "blobs", "sha256", lost.Encoded())); err != nil {
		t.Fatalf("remove the zTOC of the stale image's second layer: %v", err)
	}
	lazyLayers := fuseLayers(t, e)
	if lazyLayers != 5 {
		t.Fatalf("want the 3 layers of %s and 2 of %s mounted lazily, got %d", lazyRef, staleRef, lazyLayers)
	}

	e.Daemon.Kill()
	killUnder(t, e.Daemon.Root)
	host := e.Registry.Host
	if err := e.Registry.Stop(); err != nil {
		t.Fatal(err)
	}
	hole := startBlackhole(t, host)
	from := logSize(t, e)
	start := time.Now()
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("start-up with the registry hanging: %s (mount timeout %s)", took.Round(time.Millisecond), mountTimeout)
	if took >= mountTimeout {
		t.Errorf("start-up took %s, not less than the mount timeout %s: the restore waited for the registry", took, mountTimeout)
	}
	data, err := os.ReadFile(e.Daemon.Log())
	if err != nil {
		t.Fatal(err)
	}
	restored := regexp.MustCompile(`restored remote snapshots.*failed=(\d+).*snapshots=(\d+)`).FindSubmatch(data[from:])
	if restored == nil || string(restored[1]) != "1" || string(restored[2]) != "5" {
		t.Errorf("want a log line of 5 remote snapshots restored, 1 failed; got %q", restored)
	}
	skipped := regexp.MustCompile(`level=warning msg="remote snapshot not restored; skipped[^\n]*not restorable from local state[^\n]*snapshot=`).Find(data[from:])
	if skipped == nil {
		t.Errorf("no warning naming the snapshot not restorable from local state:\n%s", e.Daemon.LogTail(30))
	}
	if n := fuseLayers(t, e); n != lazyLayers-1 {
		t.Errorf("after restart: %d lazily loaded layers mounted, want %d", n, lazyLayers-1)
	}
	checkAfterCrash(t, ctx, e)
	checkSums(t, runSums(t, ctx, e, lazyRef, lazy.paths), lazy.want)
	checkSums(t, runSums(t, ctx, e, localRef, local.paths), local.want)
	t.Logf("connections the hanging registry took meanwhile: %d", hole.accepted())
}
