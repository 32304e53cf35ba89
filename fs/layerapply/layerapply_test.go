package layerapply

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
	osexec "os/exec"
)

// layerTar is a layer with a file, a directory made opaque and a whiteout.
func layerTar(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(h *tar.Header, body string) {
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "etc/hello", Typeflag: tar.TypeReg, Mode: 0o644}, "hello world\n")
	add(&tar.Header{Name: "opaque/", Typeflag: tar.TypeDir, Mode: 0o755}, "")
	add(&tar.Header{Name: "opaque/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644}, "")
	add(&tar.Header{Name: "etc/.wh.gone", Typeflag: tar.TypeReg, Mode: 0o644}, "")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gzipped(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w, err := zstd.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func checkTree(t *testing.T, dir string) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(dir, "etc/hello")); err != nil || string(b) != "hello world\n" {
		t.Fatalf("etc/hello: %q, %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "etc/gone"), &st); err != nil {
		t.Fatalf("whiteout: %v", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("whiteout etc/gone: mode %o rdev %d, want a 0/0 character device", st.Mode, st.Rdev)
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(dir, "opaque"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opaque dir xattr: %q, %v", buf[:n], err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "opaque/.wh..wh..opq")); !os.IsNotExist(err) {
		t.Fatalf("opaque marker left as a file: %v", err)
	}
}

func TestApplyCompressions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("whiteouts need root (mknod, trusted xattrs)")
	}
	raw := layerTar(t)
	want := digest.FromBytes(raw)
	for name, blob := range map[string][]byte{"gzip": gzipped(t, raw), "zstd": zstded(t, raw), "none": raw} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			got, err := Apply(context.Background(), dir, bytes.NewReader(blob), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := Check(got.DiffID, want); err != nil {
				t.Fatal(err)
			}
			checkTree(t, dir)
		})
	}
}

func TestApplyExternalProgram(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("whiteouts need root")
	}
	gz, err := lookPath("gzip")
	if err != nil {
		t.Skip("no gzip program")
	}
	raw := layerTar(t)
	dir := t.TempDir()
	opts := Options{Programs: map[string]Program{"gzip": {Path: gz, Args: []string{"-d", "-c"}}}}
	got, err := Apply(context.Background(), dir, bytes.NewReader(gzipped(t, raw)), opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(got.DiffID, digest.FromBytes(raw)); err != nil {
		t.Fatal(err)
	}
	checkTree(t, dir)

	// A failing program fails the unpack.
	opts.Programs["gzip"] = Program{Path: "/bin/false"}
	if _, err := Apply(context.Background(), t.TempDir(), bytes.NewReader(gzipped(t, raw)), opts); err == nil {
		t.Fatal("unpack through a failing program succeeded")
	}
}

func TestDiffIDMismatch(t *testing.T) {
	raw := layerTar(t)
	other := append(bytes.Clone(raw), make([]byte, 512)...) // same files, one more zero block
	got, err := Apply(context.Background(), t.TempDir(), bytes.NewReader(gzipped(t, other)), Options{})
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skip("whiteouts need root")
		}
		t.Fatal(err)
	}
	if err := Check(got.DiffID, digest.FromBytes(raw)); !errors.Is(err, ErrDiffID) {
		t.Fatalf("Check of another tar: %v, want ErrDiffID", err)
	}
}

func TestCorruptGzipFails(t *testing.T) {
	blob := gzipped(t, layerTar(t))
	blob[len(blob)-6] ^= 0xff // the CRC trailer
	if _, err := Apply(context.Background(), t.TempDir(), bytes.NewReader(blob), Options{}); err == nil {
		t.Fatal("a gzip stream with a bad CRC unpacked")
	}
}

// errAtEnd delivers b, then fails instead of io.EOF, as a digest-checking
// reader does.
type errAtEnd struct {
	r   io.Reader
	err error
}

func (e *errAtEnd) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestReaderErrorAtEndWins(t *testing.T) {
	blob := gzipped(t, layerTar(t))
	blob = append(blob, make([]byte, 100)...) // trailing bytes after the gzip member are read too
	sentinel := errors.New("digest mismatch")
	_, err := Apply(context.Background(), t.TempDir(), &errAtEnd{r: bytes.NewReader(blob), err: sentinel}, Options{})
	if !errors.Is(err, sentinel) {
		t.Fatalf("Apply: %v, want the reader's error", err)
	}
}

func lookPath(name string) (string, error) { return osexec.LookPath(name) }

func TestImplicitDirsInheritFromLowers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown and trusted xattrs need root")
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range []*tar.Header{
		{Name: "a/b/file", Typeflag: tar.TypeReg, Mode: 0o644}, // a/ and a/b/ implicit
		{Name: "c/", Typeflag: tar.TypeDir, Mode: 0o700},
		{Name: "c/f", Typeflag: tar.TypeReg, Mode: 0o644},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	dir := t.TempDir()
	res, err := Apply(context.Background(), dir, bytes.NewReader(gzipped(t, b.Bytes())), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(res.Implicit, ","); got != "a,a/b" {
		t.Fatalf("implicit directories %q, want a,a/b", got)
	}
	// The layer below has a (sticky, owned by 1000, an xattr, opaque);
	// the one below it has a/b but a nearer layer replaced... nothing.
	near, far := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(near, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(near, "a"), 0o1777|os.ModeSticky)
	os.Lchown(filepath.Join(near, "a"), 1000, 1001)
	unix.Lsetxattr(filepath.Join(near, "a"), "user.k", []byte("v"), 0)
	unix.Lsetxattr(filepath.Join(near, "a"), "trusted.overlay.opaque", []byte("y"), 0)
	if err := os.MkdirAll(filepath.Join(far, "a", "b"), 0o750); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(far, "a", "b"), 0o750)
	if err := InheritDirs(dir, res.Implicit, []string{near, far}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "a"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o1777 || st.Uid != 1000 || st.Gid != 1001 {
		t.Fatalf("a: mode %o uid %d gid %d, want the lower layer's 1777 1000 1001", st.Mode&0o7777, st.Uid, st.Gid)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "a"), "user.k", buf); err != nil || string(buf[:n]) != "v" {
		t.Fatalf("a: user.k %q, %v", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dir, "a"), "trusted.overlay.opaque", buf); err == nil {
		t.Fatal("a trusted xattr (opaque) was inherited")
	}
	if err := unix.Lstat(filepath.Join(dir, "a", "b"), &st); err != nil || st.Mode&0o7777 != 0o750 {
		t.Fatalf("a/b: mode %o, %v; want the farther layer's 750", st.Mode&0o7777, err)
	}
	if err := unix.Lstat(filepath.Join(dir, "c"), &st); err != nil || st.Mode&0o7777 != 0o700 {
		t.Fatalf("explicit c: mode %o, %v", st.Mode&0o7777, err)
	}
}
