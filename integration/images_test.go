package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/image"
)

var epoch = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

func dir(name string) image.Entry {
	return image.Entry{Name: name, Type: tar.TypeDir, Mode: 0o755, ModTime: epoch}
}

func file(name string, data []byte) image.Entry {
	return image.Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Data: data}
}

func randomBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// layeredImage is a three-layer image with a file deleted by an upper layer
// (whiteout), a directory made opaque, a symlink and a hardlink. want maps
// each probed path to the line `probe sha256` must print for it.
type layeredImage struct {
	spec  image.Spec
	paths []string
	want  map[string]string
}

func newLayeredImage() layeredImage {
	small := []byte("hello from the bottom layer\n")
	big := randomBytes(1, 3<<20+12345)
	top := []byte("top layer\n")
	fresh := []byte("new file in an opaque dir\n")
	probe := image.Entry{Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}
	l1 := image.Layer{Entries: []image.Entry{
		dir("bin"), probe, dir("etc"), file("etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n")),
		dir("data"), file("data/a.txt", small), file("data/gone.txt", []byte("deleted above\n")),
		dir("data/opq"), file("data/opq/old.txt", []byte("hidden by opaque\n")),
		dir("tmp"),
	}}
	l2 := image.Layer{Entries: []image.Entry{
		dir("data"), file("data/b.bin", big), image.Whiteout("data/gone.txt"),
		dir("data/opq"), image.OpaqueDir("data/opq"), file("data/opq/new.txt", fresh),
	}}
	l3 := image.Layer{Entries: []image.Entry{
		dir("data"), file("data/c.txt", top),
		{Name: "data/link", Type: tar.TypeSymlink, Linkname: "a.txt", Mode: 0o777, ModTime: epoch},
		{Name: "data/hard", Type: tar.TypeLink, Linkname: "data/c.txt", ModTime: epoch},
	}}
	img := layeredImage{
		spec: image.Spec{
			Layers:     []image.Layer{l1, l2, l3},
			Entrypoint: []string{"/bin/probe"},
		},
		want: map[string]string{},
	}
	add := func(path string, data []byte) {
		img.paths = append(img.paths, path)
		if data == nil {
			img.want[path] = path + " MISSING"
			return
		}
		sum := sha256.Sum256(data)
		img.want[path] = path + " " + hex.EncodeToString(sum[:])
	}
	add("/data/a.txt", small)
	add("/data/b.bin", big)
	add("/data/c.txt", top)
	add("/data/link", small)
	add("/data/hard", top)
	add("/data/gone.txt", nil)
	add("/data/opq/old.txt", nil)
	add("/data/opq/new.txt", fresh)
	return img
}

// push builds spec and pushes it as repo:tag to the env's registry.
func pushImage(t *testing.T, host, name string, spec image.Spec) string {
	t.Helper()
	img, err := image.Build(spec)
	if err != nil {
		t.Fatalf("build image %s: %v", name, err)
	}
	ref := fmt.Sprintf("%s/%s", host, name)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := image.Push(ctx, ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// checkSums compares `probe sha256` output with the expected lines.
func checkSums(t *testing.T, out string, want map[string]string) {
	t.Helper()
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(f[0], "/") {
			got[f[0]] = line
		}
	}
	for path, w := range want {
		if got[path] != w {
			t.Errorf("%s: got %q, want %q", path, got[path], w)
		}
	}
}
