package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// OursPrefetch is our snapshotter running a Prefetch workload's image with
// its recorded prefetch artifact; Ours runs the same image without it.
const OursPrefetch = "soci+prefetch"

// PrefetchDaemonConfig is added to the daemon config of both columns of a
// Prefetch workload.
const PrefetchDaemonConfig = `
[prefetch]
  enable = true
`

// recordDaemonConfig is the recording daemon's: it records the image from
// its first mount until the container opens ReadyMarker (the window is a
// bound that should never end first); no background walk, as in a
// production recording it would only add traffic.
const recordDaemonConfig = `
[background_fetch]
  disable = true
[prefetch]
  record = true
  record_seconds = 600
  record_until_file = "` + ReadyMarker + `"
`

// recordPrefetch makes the two images of a Prefetch workload the way a user
// would, straight on the registry (unshaped): it pushes img without an
// index to repo+"-src", and on a tools node (containerd, no daemon) pulls it
// and `soci convert`s it into repo (the image without artifact), which it
// pushes; a recording node (our daemon, record on) pulls repo and runs it
// to ready; then on the tools node `soci prefetch from-trace` attaches the
// trace and the image is pushed as prefetchRepo. It returns prefetchRepo.
func recordPrefetch(ctx context.Context, cfg Config, registry, repo string, img *image.Image, progress func(string, ...any)) (string, error) {
	name, _, _ := strings.Cut(repo, ":")
	src, ref, pref := registry+"/"+name+"-src:latest", registry+"/"+repo, registry+"/"+name+":prefetch"
	if err := image.Push(ctx, src, img); err != nil {
		return "", fmt.Errorf("push %s: %w", src, err)
	}
	dir := filepath.Join(cfg.WorkDir, "record", strings.ReplaceAll(name, "/", "-"))
	tools, err := startNode(ctx, cfg, filepath.Join(dir, "tools"), snapshotter{name: Overlayfs, plugin: "overlayfs"}, "")
	if err != nil {
		return "", err
	}
	defer stopNode(tools)
	e := tools.env
	if _, err := e.Nerdctl(ctx, "pull", "-q", "--unpack=false", src); err != nil {
		return "", fmt.Errorf("tools node: %w", err)
	}
	if _, err := e.Soci(ctx, "convert", "--span-size", strconv.FormatInt(cfg.SpanSize, 10), "--min-layer-size", "0", src, ref); err != nil {
		return "", fmt.Errorf("tools node: %w", err)
	}
	if _, err := e.Nerdctl(ctx, "push", ref); err != nil {
		return "", fmt.Errorf("tools node: %w", err)
	}
	progress("converted %s with soci and pushed it; recording a run", ref)

	rec, err := startNode(ctx, cfg, filepath.Join(dir, "record"),
		snapshotter{name: Ours, plugin: "soci", bin: filepath.Join(cfg.Tools.Ours, "soci-snapshotter-grpc")},
		cfg.DaemonConfig+recordDaemonConfig)
	if err != nil {
		return "", err
	}
	defer stopNode(rec)
	start := time.Now()
	if _, err := rec.env.Nerdctl(ctx, "--snapshotter", "soci", "pull", "-q", ref); err != nil {
		return "", fmt.Errorf("recording node: %w", err)
	}
	out, err := rec.env.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref)
	if err != nil {
		return "", fmt.Errorf("recording node: %w", err)
	}
	if !strings.Contains(out, "\nready") {
		return "", fmt.Errorf("recording node: the container did not print ready:\n%s", out)
	}
	trace, err := waitTrace(ctx, rec.daemon.Root, rec.daemon.Log())
	if err != nil {
		return "", err
	}
	progress("recorded %s in %.1fs (unshaped): %s", ref, time.Since(start).Seconds(), trace)

	if _, err := e.Soci(ctx, "prefetch", "from-trace", "--trace", trace, ref); err != nil {
		return "", fmt.Errorf("tools node: %w", err)
	}
	// Not `nerdctl tag`: it pulls what it finds missing, and so points
	// ref at the image in the registry again.
	if _, err := e.Ctr(ctx, "images", "tag", ref, pref); err != nil {
		return "", fmt.Errorf("tools node: %w", err)
	}
	if _, err := e.Nerdctl(ctx, "push", pref); err != nil {
		return "", fmt.Errorf("tools node: %w", err)
	}
	return name + ":prefetch", nil
}

// waitTrace polls the daemon root's trace directory until one trace is
// there and returns its path.
func waitTrace(ctx context.Context, root, log string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		files, _ := filepath.Glob(filepath.Join(root, "fs", "traces", "sha256", "*.json"))
		switch {
		case len(files) == 1:
			return files[0], nil
		case len(files) > 1:
			return "", fmt.Errorf("recording node: %d traces, want 1: %v", len(files), files)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("recording node wrote no trace (daemon log %s): %w", log, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// prefetchDone matches the fields of a daemon's "prefetch done" log line.
var prefetchDone = regexp.MustCompile(`bytes=(\d+).*msg="prefetch done"|msg="prefetch done".*bytes=(\d+)`)

// prefetchedBytes sums the compressed bytes the daemon's layer prefetches
// reported fetching (its log, hosts included).
func prefetchedBytes(log string) (int64, error) {
	data, err := os.ReadFile(log)
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, line := range strings.Split(string(data), "\n") {
		m := prefetchDone.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v := m[1] + m[2]
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, errors.New("bad bytes in " + line)
		}
		sum += n
	}
	return sum, nil
}

// probeBytesRead sums the bytes the probe's commands report reading in
// the container's output: "chain N BYTES", "read-fraction N BYTES",
// "read-all N BYTES" and read-bytes' "PATH BYTES".
func probeBytesRead(lines []string) int64 {
	var sum int64
	for _, l := range lines {
		f := strings.Fields(l)
		var v string
		switch {
		case len(f) == 3 && (f[0] == "chain" || f[0] == "read-fraction" || f[0] == "read-all"):
			v = f[2]
		case len(f) == 2 && strings.HasPrefix(f[0], "/"):
			v = f[1]
		default:
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			sum += n
		}
	}
	return sum
}
