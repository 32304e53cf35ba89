package index

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
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
}

// Store finds SOCI indices and opens zTOCs, keeping both on local disk so
// that a restarted daemon needs no registry for layers it has seen. It is
// safe for concurrent use.
type Store struct {
	root        string
	reg         Registry
	v1, v2      bool
	negativeTTL time.Duration
	timeout     time.Duration
	now         func() time.Time

	finds   singleflight.Group // by manifest and explicit index digest
	fetches singleflight.Group // zTOC downloads, by digest

	mu         sync.Mutex
	answers    map[string]answer
	indices    map[digest.Digest]*Index
	prefetched map[digest.Digest]bool // indices whose zTOCs Prefetch has started
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
	s := &Store{
		root: opts.Root, reg: opts.Registry, v1: opts.V1, v2: opts.V2,
		negativeTTL: opts.NegativeTTL, timeout: opts.Timeout, now: time.Now,
		answers: map[string]answer{}, indices: map[digest.Digest]*Index{}, prefetched: map[digest.Digest]bool{},
	}
	if s.negativeTTL <= 0 {
		s.negativeTTL = DefaultNegativeTTL
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	return s, nil
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

// remember keeps a found index for good and a "not found" for the negative
// TTL; other errors (a registry hiccup) are not remembered.
func (s *Store) remember(key string, idx *Index, err error) {
	a := answer{idx: idx, err: err}
	switch {
	case err == nil:
	case isNotFound(err):
		a.expires = s.now().Add(s.negativeTTL)
	default:
		return
	}
	s.mu.Lock()
	s.answers[key] = a
	s.mu.Unlock()
}

func (s *Store) blobPath(d digest.Digest) string {
	return filepath.Join(s.root, "blobs", string(d.Algorithm()), d.Encoded())
}

func (s *Store) choicePath(manifest digest.Digest) string {
	return filepath.Join(s.root, "manifests", string(manifest.Algorithm()), manifest.Encoded())
}

// readBlob returns the local copy of blob d, verified. A copy that fails
// verification is removed and reported as missing.
func (s *Store) readBlob(ctx context.Context, d digest.Digest) ([]byte, bool) {
	data, err := os.ReadFile(s.blobPath(d))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.G(ctx).WithError(err).WithField("digest", d).Warn("unreadable local blob, fetching it again")
		}
		return nil, false
	}
	if err := verify(d, data); err != nil {
		log.G(ctx).WithError(err).WithField("digest", d).Warn("corrupt local blob removed, fetching it again")
		_ = os.Remove(s.blobPath(d))
		return nil, false
	}
	return data, true
}

// writeBlob stores blob d, which the caller has verified.
func (s *Store) writeBlob(d digest.Digest, data []byte) error {
	return writeAtomic(s.blobPath(d), data)
}

// RemoveBlob deletes the local copy of blob d (a zTOC no mounted layer
// needs any more); a later Open fetches it again. A missing blob is not an
// error.
func (s *Store) RemoveBlob(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("remove blob %q: %w", d, err)
	}
	if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
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
	data, err := os.ReadFile(s.choicePath(manifest))
	if err != nil {
		return choice{}, false
	}
	var c choice
	if json.Unmarshal(data, &c) != nil || c.Index.Validate() != nil {
		return choice{}, false
	}
	return c, true
}

func (s *Store) writeChoice(manifest digest.Digest, c choice) error {
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return writeAtomic(s.choicePath(manifest), data)
}

// writeAtomic writes data to path through a synced temporary file and a
// rename, so that readers see the old content, the new one, or nothing.
func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("store %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("store %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
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
