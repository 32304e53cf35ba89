package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/fastsoci/soci-snapshotter/internal/crash"
	"github.com/fastsoci/soci-snapshotter/internal/staging"
)

// Defaults for Options fields left zero.
const (
	DefaultNegativeTTL = time.Minute
	DefaultTimeout     = 2 * time.Minute
)

// Options configures a Store.
type Options struct {
	// Root holds the local state: blobs/<alg>/<hex> (SOCI indices and
	// zTOCs, by digest) and manifests/<alg>/<hex> (the index chosen for an
	// image manifest and how it was found).
	Root     string
	Registry Registry
	// V1 and V2 enable discovery through the referrers API (SOCI v1) and
	// through the image manifest's annotation (SOCI v2).
	V1, V2 bool
	// NegativeTTL is how long "this image has no index" is remembered.
	NegativeTTL time.Duration
	// Timeout bounds one shared discovery or zTOC fetch. Shared work runs
	// detached from the caller's cancellation so that one impatient caller
	// does not fail the others waiting on it.
	Timeout time.Duration
	// Limits bound the indices and zTOCs the store accepts.
	Limits Limits
	// ContentSource, if set, is read for a SOCI index or zTOC missing
	// from Root before the registry is asked ([content_store] type =
	// "containerd").
	ContentSource ContentSource
}

// Store finds SOCI indices and opens zTOCs, keeping both on local disk so
// that a restarted daemon needs no registry for layers it has seen. It is
// safe for concurrent use.
type Store struct {
	root        string
	reg         Registry
	source      ContentSource // nil: none
	v1, v2      bool
	negativeTTL time.Duration
	timeout     time.Duration
	lim         Limits
	now         func() time.Time
	// staging is the process's own directory for blobs being written
	// (see internal/staging): several processes may share the store.
	staging *staging.Dir

	finds   singleflight.Group // by manifest and explicit index digest
	fetches singleflight.Group // zTOC downloads, by digest

	// loads is the node-wide budget of zTOC loads in progress, weighed
	// by their heap estimates (see parseZTOC); loading, if set, is called
	// with the estimate once a load holds its share (tests).
	loads   *semaphore.Weighted
	loading func(estimate int64)

	// The maps are bounded (see memory.go): they are a cache of what is on
	// disk, and Release prunes them with the images that used them.
	mu         sync.Mutex
	answers    map[string]answer
	indices    map[digest.Digest]*Index
	indexBytes int64                           // sum of the cached indices' sizes
	prefetched map[digest.Digest]chan struct{} // indices whose zTOCs Prefetch has started: closed once those downloads ended
}

// answer is a remembered Find result. A zero expires never expires.
type answer struct {
	idx     *Index
	err     error
	expires time.Time
}

// New returns a Store keeping its state under opts.Root.
func New(opts Options) (*Store, error) {
	if opts.Root == "" {
		return nil, errors.New("index store: no root directory")
	}
	if opts.Registry == nil {
		return nil, errors.New("index store: no registry")
	}
	for _, dir := range []string{"blobs", "manifests"} {
		if err := os.MkdirAll(filepath.Join(opts.Root, dir), 0o700); err != nil {
			return nil, fmt.Errorf("index store: %w", err)
		}
	}
	st, err := staging.Open(filepath.Join(opts.Root, stagingDir))
	if err != nil {
		return nil, fmt.Errorf("index store: %w", err)
	}
	if err := sweepLegacyTemps(opts.Root, time.Now()); err != nil {
		st.Close()
		return nil, fmt.Errorf("index store: %w", err)
	}
	s := &Store{
		staging: st,
		root:    opts.Root, reg: opts.Registry, source: opts.ContentSource, v1: opts.V1, v2: opts.V2,
		negativeTTL: opts.NegativeTTL, timeout: opts.Timeout, lim: opts.Limits.withDefaults(), now: time.Now,
		answers: map[string]answer{}, indices: map[digest.Digest]*Index{}, prefetched: map[digest.Digest]chan struct{}{},
	}
	s.loads = semaphore.NewWeighted(s.lim.MaxZTOCHeapBytes)
	if s.negativeTTL <= 0 {
		s.negativeTTL = DefaultNegativeTTL
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	return s, nil
}

// stagingDir holds the staging directories of the processes using the
// store; digests never map to it (their algorithm never starts with '.').
const stagingDir = ".tmp"

// Close deletes the store's staging directory; what is stored stays. No
// write may be under way or follow.
func (s *Store) Close() error {
	return s.staging.Close()
}

// sweepLegacyTemps deletes the temporary files (".tmp-*") that versions
// before per-process staging wrote next to their targets, once older than
// staging.LegacyAge at now: younger ones may be an older process's
// writes in flight.
func sweepLegacyTemps(root string, now time.Time) error {
	var errs []error
	for _, dir := range []string{"blobs", "manifests"} {
		algs, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, alg := range algs {
			if !alg.IsDir() {
				continue
			}
			files, err := os.ReadDir(filepath.Join(root, dir, alg.Name()))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, f := range files {
				if !strings.HasPrefix(f.Name(), ".tmp-") {
					continue
				}
				fi, err := f.Info()
				if err != nil || now.Sub(fi.ModTime()) < staging.LegacyAge {
					continue
				}
				if err := os.Remove(filepath.Join(root, dir, alg.Name(), f.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweep old temporary files: %w", err)
	}
	return nil
}

// workContext is the context of work shared by several callers: the
// caller's values (credentials, logger) without its cancellation, bounded
// by the store's timeout.
func (s *Store) workContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
}

// wait waits for a singleflight result or the caller's cancellation.
func wait(ctx context.Context, ch <-chan singleflight.Result) (any, error) {
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a shared lookup: %w", ctx.Err())
	case r := <-ch:
		return r.Val, r.Err
	}
}

// recall returns the remembered answer for key, if it is still fresh.
func (s *Store) recall(key string) (answer, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.answers[key]
	if ok && !a.expires.IsZero() && !s.now().Before(a.expires) {
		delete(s.answers, key)
		return answer{}, false
	}
	return a, ok
}

// remember keeps a found index (until it is released or evicted) and, for
// the negative TTL, a "not found" or a malformed index (its digest was
// verified: fetching it again gives the same bytes); other errors (a
// registry hiccup) are not remembered.
func (s *Store) remember(key string, idx *Index, err error) {
	a := answer{idx: idx, err: err}
	switch {
	case err == nil:
	case isNotFound(err) || errors.Is(err, ErrNotSOCIIndex):
		a.expires = s.now().Add(s.negativeTTL)
	default:
		return
	}
	s.mu.Lock()
	s.makeRoomForAnswer()
	s.answers[key] = a
	s.mu.Unlock()
}

// blobPath is where blob d is kept: blobs/<algorithm>/<hex>.
func (s *Store) blobPath(d digest.Digest) (string, error) {
	return s.localPath("blobs", d)
}

// choicePath is where the index chosen for an image manifest is recorded:
// manifests/<algorithm>/<hex>.
func (s *Store) choicePath(manifest digest.Digest) (string, error) {
	return s.localPath("manifests", manifest)
}

// localPath maps a digest to dir/<algorithm>/<hex> under the root. Only a
// valid digest of a registered algorithm maps (no "..", no separator, no
// panic on a digest without ":"); the result is checked to stay in dir as
// a second line of defence.
func (s *Store) localPath(dir string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("local path of digest %s: %w", short(string(d)), err)
	}
	alg, hex := string(d.Algorithm()), d.Encoded()
	rel := filepath.Join(alg, hex)
	if !filepath.IsLocal(rel) || rel != alg+string(filepath.Separator)+hex {
		return "", fmt.Errorf("local path of digest %s: %q is not a plain relative path", short(string(d)), rel)
	}
	return filepath.Join(s.root, dir, rel), nil
}

// readBlob returns the local copy of blob d, verified. A copy that fails
// verification is removed (only that regular file, at the path derived from
// the validated digest) and reported as missing.
func (s *Store) readBlob(ctx context.Context, d digest.Digest) ([]byte, bool) {
	p, err := s.blobPath(d)
	if err != nil {
		log.G(ctx).WithError(err).Warn("refusing to look up a blob by an invalid digest")
		return nil, false
	}
	data, err := readRegular(p, s.lim.maxBlobBytes())
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithError(err).WithField("digest", d).Warn("unreadable local blob, fetching it again")
		}
		return nil, false
	}
	if err := verify(d, data); err != nil {
		log.G(ctx).WithError(err).WithField("digest", d).Warn("corrupt local blob removed, fetching it again")
		s.removeFile(ctx, p)
		return nil, false
	}
	return data, true
}

// dropBlob removes the local copy of blob d, if d is a valid digest and the
// copy a regular file.
func (s *Store) dropBlob(ctx context.Context, d digest.Digest) {
	if p, err := s.blobPath(d); err == nil {
		s.removeFile(ctx, p)
	}
}

// removeFile removes p, a path localPath returned, if it is a regular file.
func (s *Store) removeFile(ctx context.Context, p string) {
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		return
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.G(ctx).WithError(err).WithField("path", p).Warn("cannot remove a local blob")
	}
}

// readRegular reads the regular file at p (not through a symlink) when it
// holds at most limit bytes.
func readRegular(p string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > limit {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", p, limit)
	}
	// One buffer of the size the file has (zTOCs are tens of MiB: no
	// append-grown copies), and one byte more to see it grow.
	data := make([]byte, fi.Size()+1)
	n, err := io.ReadFull(f, data)
	switch {
	case err == nil:
		return nil, fmt.Errorf("%s: grew beyond %d bytes", p, fi.Size())
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return data[:n:n], nil
	default:
		return nil, err
	}
}

// haveBlob reports whether a local copy of blob d, of size bytes, is
// there, without reading it (Open verifies what it reads).
func (s *Store) haveBlob(d digest.Digest, size int64) bool {
	p, err := s.blobPath(d)
	if err != nil {
		return false
	}
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == size
}

// writeBlob stores blob d, which the caller has verified; point names the
// crash point before its rename (see internal/crash).
func (s *Store) writeBlob(d digest.Digest, data []byte, point string) error {
	p, err := s.blobPath(d)
	if err != nil {
		return err
	}
	return s.writeAtomic(p, data, point)
}

// RemoveBlob deletes the local copy of blob d (a zTOC no mounted layer
// needs any more); a later Open fetches it again. A missing blob is not an
// error.
func (s *Store) RemoveBlob(d digest.Digest) error {
	p, err := s.blobPath(d)
	if err != nil {
		return fmt.Errorf("remove blob: %w", err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove blob %s: %w", d, err)
	}
	return nil
}

// choice is the on-disk record of the index found for an image manifest.
type choice struct {
	Index digest.Digest `json:"index"`
	Mode  string        `json:"mode"` // "v1" or "v2": how it was found
}

func (s *Store) readChoice(manifest digest.Digest) (choice, bool) {
	p, err := s.choicePath(manifest)
	if err != nil {
		return choice{}, false
	}
	data, err := readRegular(p, maxChoiceBytes)
	if err != nil {
		return choice{}, false
	}
	var c choice
	if json.Unmarshal(data, &c) != nil || c.Index.Validate() != nil {
		return choice{}, false
	}
	return c, true
}

// maxChoiceBytes bounds a choice record (about 100 bytes).
const maxChoiceBytes = 4 << 10

func (s *Store) writeChoice(manifest digest.Digest, c choice) error {
	p, err := s.choicePath(manifest)
	if err != nil {
		return err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.writeAtomic(p, data, crash.ChoiceBeforeRename)
}

// writeAtomic writes data to path through a synced temporary file in the
// process's staging directory and a rename, so that readers see the old
// content, the new one, or nothing, and a crash leaves at most a file in a
// staging directory that the next start deletes.
func (s *Store) writeAtomic(path string, data []byte, point string) error {
	if err := s.staging.WriteFile(path, data, func() { crash.Point(point) }); err != nil {
		return fmt.Errorf("store %s: %w", path, err)
	}
	return nil
}

// verify checks that data has digest d.
func verify(d digest.Digest, data []byte) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("digest mismatch: content is %s, want %s", got, d)
	}
	return nil
}
