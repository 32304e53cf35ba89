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
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
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

// Apply decompresses r, unpacks the tar into dir and returns the tar's
// digest. The whole of r is read, also past the end of the tar, so that a
// reader that checks what it delivers (chunkfetch's) has the last word: its
// error is returned. dir must exist; what Apply wrote is left there on
// failure for the caller to remove.
func Apply(ctx context.Context, dir string, r io.Reader, opts Options) (digest.Digest, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(10)
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("read layer: %w", err)
	}
	dec, err := decompress(ctx, compression.DetectCompression(head), br, opts)
	if err != nil {
		return "", err
	}
	digester := digest.SHA256.Digester()
	tar := io.TeeReader(dec, digester.Hash())
	_, aerr := archive.Apply(ctx, dir, tar, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout))
	// The tar's end-of-archive blocks and anything after them count in the
	// diffID, as they do in containerd's.
	_, derr := io.Copy(io.Discard, tar)
	cerr := dec.Close()
	// Drain the compressed stream too: its reader may check a digest at
	// the end.
	_, rerr := io.Copy(io.Discard, br)
	switch {
	case rerr != nil:
		return "", fmt.Errorf("read layer: %w", rerr)
	case aerr != nil:
		return "", fmt.Errorf("unpack layer into %s: %w", dir, aerr)
	case derr != nil:
		return "", fmt.Errorf("decompress layer: %w", derr)
	case cerr != nil:
		return "", fmt.Errorf("decompress layer: %w", cerr)
	}
	return digester.Digest(), nil
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
