package cache

import (
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
)

// Memory is an in-memory cache, unbounded. It is safe for concurrent use.
// It exists for tests: the unit tests of span, background, index and cache
// use it as a fake; the daemon only ever uses Disk.
type Memory struct {
	mu      sync.RWMutex
	entries map[string][]byte // by keyPath
}

// NewMemory returns an empty Memory cache.
func NewMemory() *Memory {
	return &Memory{entries: make(map[string][]byte)}
}

// Get returns a copy of the entry for key; a miss wraps errdefs.ErrNotFound.
func (m *Memory) Get(key string) ([]byte, error) {
	p, err := keyPath(key)
	if err != nil {
		return nil, fmt.Errorf("get cache entry: %w", err)
	}
	m.mu.RLock()
	data, ok := m.entries[p]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("get cache entry %q: %w", key, errdefs.ErrNotFound)
	}
	return append([]byte(nil), data...), nil
}

// GetAt reads part of the entry for key with the io.ReaderAt contract.
func (m *Memory) GetAt(key string, b []byte, off int64) (int, error) {
	p, err := keyPath(key)
	if err != nil {
		return 0, fmt.Errorf("get cache entry: %w", err)
	}
	if off < 0 {
		return 0, fmt.Errorf("get cache entry %q at %d: %w", key, off, errdefs.ErrInvalidArgument)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	data, ok := m.entries[p]
	if !ok {
		return 0, fmt.Errorf("get cache entry %q: %w", key, errdefs.ErrNotFound)
	}
	if off >= int64(len(data)) {
		return 0, io.EOF
	}
	n := copy(b, data[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// Put stores a copy of data under key.
func (m *Memory) Put(key string, data []byte) error {
	p, err := keyPath(key)
	if err != nil {
		return fmt.Errorf("put cache entry: %w", err)
	}
	data = append([]byte(nil), data...)
	m.mu.Lock()
	m.entries[p] = data
	m.mu.Unlock()
	return nil
}

// Remove drops the entry prefix and every entry under it.
func (m *Memory) Remove(prefix string) error {
	p, err := keyPath(prefix)
	if err != nil {
		return fmt.Errorf("remove cache entries: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.entries {
		if k == p || strings.HasPrefix(k, p+"/") {
			delete(m.entries, k)
		}
	}
	return nil
}

// Len returns the number of entries.
func (m *Memory) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.entries)
}
