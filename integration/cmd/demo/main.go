// Command demo runs the main job end to end on a private node: it starts a
// registry, containerd and our daemon in a temporary directory, pushes a
// generated image, runs it with nerdctl --snapshotter soci, prints what
// happened and tears everything down. `make demo` runs it.
package main

import (
	"archive/tar"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

func main() {
	keep := flag.Bool("keep", false, "keep the demo's state directory")
	flag.Parse()
	if err := run(*keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(keep bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "soci-demo")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	probe, err := buildProbe(dir)
	if err != nil {
		return err
	}
	fmt.Printf("state directory: %s\n", dir)
	env, err := harness.Start(ctx, tools, filepath.Join(dir, "node"), "")
	if err != nil {
		return err
	}
	defer env.Close()
	ref, size, err := pushDemoImage(ctx, env.Registry.Host, probe)
	if err != nil {
		return err
	}
	fmt.Printf("pushed %s with a SOCI v2 index (3 layers, %.1f MiB compressed)\n", ref, float64(size)/(1<<20))
	return pullAndRun(ctx, env, ref, size)
}

func pullAndRun(ctx context.Context, env *harness.Env, ref string, size int64) error {
	start := time.Now()
	if _, err := env.Nerdctl(ctx, "--snapshotter", "soci", "pull", "--quiet", ref); err != nil {
		return err
	}
	pulled := time.Since(start)
	out, err := env.Nerdctl(ctx, "--snapshotter", "soci", "run", "--rm", "--net", "none", ref,
		"sha256", "/etc/motd", "--", "read-bytes", "/data/blob-0", "2097152", "--", "ready")
	if err != nil {
		return err
	}
	ready := time.Since(start)
	fuse := 0
	if mounts, err := harness.Mounts(env.Daemon.Root); err == nil {
		for _, typ := range mounts {
			if strings.HasPrefix(typ, "fuse") {
				fuse++
			}
		}
	}
	served, err := harness.RegistryBytesServed(env.Registry.Log())
	if err != nil {
		return err
	}
	fmt.Printf("container output:\n%s", indent(out))
	fmt.Printf("pull: %s, ready: %s (pull + run)\n", pulled.Round(time.Millisecond), ready.Round(time.Millisecond))
	fmt.Printf("registry bytes served up to ready: %.1f MiB of %.1f MiB (%.1f%%), zTOCs and the background walk included; lazily loaded (FUSE) layers mounted: %d\n",
		float64(served)/(1<<20), float64(size)/(1<<20), 100*float64(served)/float64(size), fuse)
	fmt.Println("(loopback is a fast link: the background walk that makes the image local waits until mounts and reads are over;" +
		" on a link slower than [limits] background_fast_link_mbit it starts at the mount)")
	return nil
}

func pushDemoImage(ctx context.Context, host string, probe []byte) (string, int64, error) {
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	base := image.Layer{Entries: []image.Entry{
		{Name: "bin", Type: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: mtime, Data: probe},
		{Name: "etc", Type: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		{Name: "etc/motd", Type: tar.TypeReg, Mode: 0o644, ModTime: mtime, Data: []byte("hello from a SOCI demo image\n")},
	}}
	spec := image.Spec{Layers: []image.Layer{base}, Entrypoint: []string{"/bin/probe"}}
	for i := 0; i < 2; i++ {
		spec.Layers = append(spec.Layers, image.Layer{Entries: []image.Entry{
			{Name: "data", Type: tar.TypeDir, Mode: 0o755, ModTime: mtime},
			{Name: fmt.Sprintf("data/blob-%d", i), Type: tar.TypeReg, Mode: 0o644, ModTime: mtime, Size: 64 << 20, Seed: int64(i)},
		}})
	}
	img, err := image.Build(spec)
	if err != nil {
		return "", 0, err
	}
	ref := host + "/demo/app:latest"
	if _, _, err := sociimage.PushV2(ctx, ref, img, sociimage.Options{SpanSize: 1 << 20}); err != nil {
		return "", 0, err
	}
	var size int64
	for _, l := range img.LayerDescs {
		size += l.Size
	}
	return ref, size, nil
}

func buildProbe(dir string) ([]byte, error) {
	out := filepath.Join(dir, "probe")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./integration/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build probe: %v\n%s", err, b)
	}
	return os.ReadFile(out)
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.HasPrefix(l, "time=") { // nerdctl's own log lines
			continue
		}
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}
