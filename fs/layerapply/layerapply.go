// Package layerapply unpacks one compressed layer tar into a directory the
// way containerd's overlay applier does (containerd's archive.Apply with
// overlay whiteouts: a whiteout becomes a 0/0 character device, an opaque
// marker the overlay "opaque" xattr) and returns the layer's diffID, the
// digest of the uncompressed tar, for the caller to check before it uses the
// directory. The compression (gzip, zstd, none) is detected from the stream
// as containerd detects it (gzip is inflated with klauspost/compress, zstd
// and none by containerd's code); an external program may replace the built-in
// decompressor of an algorithm ([pull_modes.parallel_pull_unpack]
// decompress_streams).
package layerapply

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/continuity/sysx"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Program is an external decompressor: run without a shell, it reads the
// compressed stream on stdin and writes the tar on stdout.
type Program struct {
	Path string
	Args []string
}

// Options tune Apply.
type Options struct {
	// Programs replace the built-in decompressor of "gzip" or "zstd".
	Programs map[string]Program
}

// ErrDiffID is the class of a layer whose uncompressed tar is not the one
// expected.
var ErrDiffID = errors.New("layer diffID mismatch")

// Result is what Apply learnt of a layer.
type Result struct {
	// DiffID is the sha256 of the uncompressed tar.
	DiffID digest.Digest
	// Implicit are the directories (relative to dir) that Apply created
	// because entries below them needed them, the tar holding no entry of
	// their own. containerd gives them the attributes of the same
	// directory in the layers below, which parallel unpack does not have
	// yet: InheritDirs does it once they are there.
	Implicit []string
}

// MaxDirEntries bounds the directory entries of a layer that Apply
// remembers to tell implicit directories from explicit ones.
const MaxDirEntries = 1 << 20

// Apply decompresses r, unpacks the tar into dir and returns the tar's
// digest and its implicit directories. The whole of r is read, also past
// the end of the tar, so that a reader that checks what it delivers
// (chunkfetch's) has the last word: its error is returned. dir must exist;
// what Apply wrote is left there on failure for the caller to remove.
func Apply(ctx context.Context, dir string, r io.Reader, opts Options) (Result, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(10)
	if err != nil && err != io.EOF {
		return Result{}, fmt.Errorf("read layer: %w", err)
	}
	dec, err := decompress(ctx, compression.DetectCompression(head), br, opts)
	if err != nil {
		return Result{}, err
	}
	digester := digest.SHA256.Digester()
	// A second tar reader on the same bytes notes the directory entries.
	pr, pw := io.Pipe()
	dirs := map[string]bool{}
	noted := make(chan error, 1)
	go func() { noted <- noteDirs(pr, dirs) }()
	tarStream := io.TeeReader(dec, io.MultiWriter(digester.Hash(), pw))
	_, aerr := archive.Apply(ctx, dir, tarStream, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	// The tar's end-of-archive blocks and anything after them count in the
	// diffID, as they do in containerd's.
	_, derr := io.Copy(io.Discard, tarStream)
	pw.Close()
	nerr := <-noted
	cerr := dec.Close()
	// Drain the compressed stream too: its reader may check a digest at
	// the end.
	_, rerr := io.Copy(io.Discard, br)
	switch {
	case rerr != nil:
		return Result{}, fmt.Errorf("read layer: %w", rerr)
	case aerr != nil:
		return Result{}, fmt.Errorf("unpack layer into %s: %w", dir, aerr)
	case derr != nil:
		return Result{}, fmt.Errorf("decompress layer: %w", derr)
	case cerr != nil:
		return Result{}, fmt.Errorf("decompress layer: %w", cerr)
	}
	res := Result{DiffID: digester.Digest()}
	if nerr != nil {
		// archive.Apply accepted the tar, so this is the bound: the
		// directories keep the attributes Apply gave them.
		return res, nil
	}
	res.Implicit, err = implicitDirs(dir, dirs)
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

// noteDirs reads the tar r and records the cleaned names of its directory
// entries, at most MaxDirEntries; r is always read to its end.
func noteDirs(r io.Reader, dirs map[string]bool) error {
	defer io.Copy(io.Discard, r) //nolint:errcheck // unblock the writer
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeDir {
			continue
		}
		if len(dirs) >= MaxDirEntries {
			return fmt.Errorf("more than %d directory entries", MaxDirEntries)
		}
		name := path.Clean("/" + h.Name)[1:]
		dirs[name] = true
	}
}

// implicitDirs lists the directories under dir that are not among the
// tar's directory entries.
func implicitDirs(dir string, explicit map[string]bool) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() || p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if !explicit[filepath.ToSlash(rel)] {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the layer's directories: %w", err)
	}
	return out, nil
}

// InheritDirs gives each implicit directory of the layer unpacked in dir
// the owner, mode and (non-trusted) xattrs of the same path in the
// first of lowers (the layers below, nearest first) that has it, as
// containerd's unpack does; a path that is not a directory there stops the
// search (the directory keeps Apply's defaults).
func InheritDirs(dir string, implicit, lowers []string) error {
	for _, rel := range implicit {
		for _, lower := range lowers {
			src, err := securejoin(lower, rel)
			if err != nil {
				return err
			}
			fi, err := os.Lstat(src)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("inherit directory attributes of %s: %w", rel, err)
			}
			if fi.IsDir() {
				if err := copyDir(fi, src, filepath.Join(dir, rel)); err != nil {
					return fmt.Errorf("inherit directory attributes of %s: %w", rel, err)
				}
			}
			break
		}
	}
	return nil
}

// securejoin joins rel to root, refusing a result outside root.
func securejoin(root, rel string) (string, error) {
	p := filepath.Join(root, rel)
	if p != root && !strings.HasPrefix(p, root+string(filepath.Separator)) {
		return "", fmt.Errorf("path %q escapes %s", rel, root)
	}
	return p, nil
}

func copyDir(fi os.FileInfo, src, dst string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", src)
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode()); err != nil {
		return err
	}
	keys, err := sysx.LListxattr(src)
	if err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.ENODATA) {
		return err
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "trusted.") {
			continue
		}
		v, err := sysx.LGetxattr(src, k)
		if err != nil {
			continue
		}
		if err := unix.Lsetxattr(dst, k, v, 0); err != nil {
			return err
		}
	}
	// Times are not copied: in containerd's unpack the entries created in
	// the directory afterwards set its mtime to the time of the unpack,
	// which it already has here.
	return nil
}

// Check compares a diffID Apply returned with the one expected.
func Check(got, want digest.Digest) error {
	if got != want {
		return fmt.Errorf("uncompressed layer has digest %s, want %s: %w", got, want, ErrDiffID)
	}
	return nil
}

func decompress(ctx context.Context, c compression.Compression, r io.Reader, opts Options) (io.ReadCloser, error) {
	name := map[compression.Compression]string{compression.Gzip: "gzip", compression.Zstd: "zstd"}[c]
	if p, ok := opts.Programs[name]; ok && name != "" {
		return runProgram(ctx, p, r)
	}
	if c == compression.Gzip {
		// klauspost's inflater takes about two thirds of the CPU time of
		// the standard library's, which containerd uses.
		zr, err := kgzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("decompress layer: %w", err)
		}
		return zr, nil
	}
	rc, err := compression.DecompressStream(r)
	if err != nil {
		return nil, fmt.Errorf("decompress layer: %w", err)
	}
	return rc, nil
}

// program is an external decompressor's stdout; Close waits for it.
type program struct {
	io.ReadCloser
	cmd    *exec.Cmd
	stderr *limitedBuffer
	once   sync.Once
	err    error
}

func runProgram(ctx context.Context, p Program, r io.Reader) (io.ReadCloser, error) {
	cmd := exec.CommandContext(ctx, p.Path, p.Args...)
	cmd.Stdin = r
	stderr := &limitedBuffer{max: 4 << 10}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("decompress layer with %s: %w", p.Path, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("decompress layer with %s: %w", p.Path, err)
	}
	return &program{ReadCloser: out, cmd: cmd, stderr: stderr}, nil
}

func (p *program) Close() error {
	p.once.Do(func() {
		// The tar was read to its end: what remains is discarded so that
		// the program can exit.
		_, _ = io.Copy(io.Discard, p.ReadCloser)
		if err := p.cmd.Wait(); err != nil {
			p.err = fmt.Errorf("%s: %w: %s", p.cmd.Path, err, strings.TrimSpace(p.stderr.String()))
		}
	})
	return p.err
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// CheckProgram makes sure p names an absolute path to an executable regular
// file, so that a wrong decompress_streams entry stops the start instead
// of every pull.
func CheckProgram(p Program) error {
	if !filepath.IsAbs(p.Path) {
		return fmt.Errorf("decompressor %q: not an absolute path", p.Path)
	}
	fi, err := os.Stat(p.Path)
	if err != nil {
		return fmt.Errorf("decompressor: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("decompressor %s: not an executable regular file (mode %v)", p.Path, fi.Mode())
	}
	return nil
}
