package hostile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Canaries are files outside the daemon's root that hostile data aims at:
// Check fails when one is gone, rewritten or touched.
type Canaries struct {
	files map[string]canary
}

type canary struct {
	data  []byte
	mtime time.Time
}

// canaryTime is the mtime canaries get, far from now, so that a rewrite
// shows even within the clock's resolution.
var canaryTime = time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)

// NewCanaries creates dir/name for each name, with content naming the file.
func NewCanaries(dir string, names ...string) (*Canaries, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("canary dir: %w", err)
	}
	c := &Canaries{files: map[string]canary{}}
	for _, name := range names {
		path := filepath.Join(dir, name)
		data := []byte("canary " + path + ": the daemon must never read, write or remove this file\n")
		c.files[path] = canary{data: data, mtime: canaryTime}
	}
	if err := c.Restore(); err != nil {
		return nil, err
	}
	return c, nil
}

// Restore writes every canary afresh, so that a check after it sees only
// what happened since.
func (c *Canaries) Restore() error {
	for path, want := range c.files {
		if err := os.WriteFile(path, want.data, 0o644); err != nil {
			return fmt.Errorf("write canary: %w", err)
		}
		if err := os.Chtimes(path, want.mtime, want.mtime); err != nil {
			return fmt.Errorf("date canary: %w", err)
		}
	}
	return nil
}

// Path returns the path of the canary named name.
func (c *Canaries) Path(name string) string {
	for p := range c.files {
		if filepath.Base(p) == name {
			return p
		}
	}
	return ""
}

// Size returns the size of the canary named name.
func (c *Canaries) Size(name string) int64 { return int64(len(c.files[c.Path(name)].data)) }

// Check reports every canary that is missing or whose content or mtime
// changed.
func (c *Canaries) Check() error {
	var errs []error
	for path, want := range c.files {
		info, err := os.Stat(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("canary %s: %w", path, err))
			continue
		}
		data, err := os.ReadFile(path)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("canary %s: %w", path, err))
		case !bytes.Equal(data, want.data):
			errs = append(errs, fmt.Errorf("canary %s: content changed", path))
		case !info.ModTime().Equal(want.mtime):
			errs = append(errs, fmt.Errorf("canary %s: mtime changed to %s", path, info.ModTime()))
		}
	}
	return errors.Join(errs...)
}

// ResetPeakRSS resets the peak RSS (VmHWM) the kernel keeps for pid, so
// that the next reading is the peak since now.
func ResetPeakRSS(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0o200); err != nil {
		return fmt.Errorf("reset the peak RSS of pid %d: %w", pid, err)
	}
	return nil
}

// Alive reports whether pid is a running process whose command line
// contains name (not a zombie, not a reused pid).
func Alive(pid int, name string) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), name) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}
