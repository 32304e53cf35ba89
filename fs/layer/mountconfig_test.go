package layer

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/log"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/sirupsen/logrus"
)

func TestMountOptionsTimeouts(t *testing.T) {
	o := MountOptions(MountConfig{AttrTimeout: 5 * time.Second, EntryTimeout: 7 * time.Second, NegativeTimeout: -time.Second})
	if *o.AttrTimeout != 5*time.Second || *o.EntryTimeout != 7*time.Second {
		t.Errorf("attr %v entry %v, want 5s and 7s", *o.AttrTimeout, *o.EntryTimeout)
	}
	if *o.NegativeTimeout < 100*365*24*time.Hour {
		t.Errorf("a negative timeout gave %v, want as long as the kernel can", *o.NegativeTimeout)
	}
	d := MountOptions(MountConfig{})
	for name, got := range map[string]time.Duration{"attr": *d.AttrTimeout, "entry": *d.EntryTimeout, "negative": *d.NegativeTimeout} {
		if got != DefaultCacheTimeout {
			t.Errorf("%s timeout of a zero MountConfig = %v, want %v", name, got, DefaultCacheTimeout)
		}
	}
	if d.MountOptions.Debug || d.MountOptions.Logger != nil || d.Logger != nil {
		t.Error("go-fuse debug output without a DebugLog")
	}
	if !d.MountOptions.DisableSplice {
		t.Error("splice enabled: reads answer with bytes, which go-fuse would try to splice at a cost")
	}
	// Each call's timeouts are its own.
	if o.AttrTimeout == d.AttrTimeout {
		t.Error("MountOptions values share their timeouts")
	}
}

// syncBuffer is a log destination safe for go-fuse's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count returns how many lines contain all of parts.
func (b *syncBuffer) count(parts ...string) int {
	n := 0
lines:
	for _, line := range strings.Split(b.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue lines
			}
		}
		n++
	}
	return n
}

func debugEntry(w *syncBuffer) *log.Entry {
	l := logrus.New()
	l.SetOutput(w)
	l.SetLevel(logrus.DebugLevel)
	l.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	return logrus.NewEntry(l)
}

// mountWith mounts b's tree with opts and mc, unmounted on cleanup.
func mountWith(t *testing.T, b *tocBuilder, opts Options, mc MountConfig) string {
	t.Helper()
	requireFUSE(t)
	root, err := NewRoot(b.toc, &b.r, opts)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	server, err := fusefs.Mount(dir, root, MountOptions(mc))
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestOperationLog: with an OperationLog every operation is logged at
// debug with its kind and path ([fuse] log_fuse_operations).
func TestOperationLog(t *testing.T) {
	var b tocBuilder
	b.dir("etc")
	b.file("etc/hosts", "127.0.0.1 localhost\n")
	var logged syncBuffer
	dir := mountWith(t, &b, Options{OperationLog: debugEntry(&logged)}, MountConfig{})
	if data, err := os.ReadFile(filepath.Join(dir, "etc", "hosts")); err != nil || string(data) != "127.0.0.1 localhost\n" {
		t.Fatalf("read: %q %v", data, err)
	}
	if _, err := os.ReadDir(filepath.Join(dir, "etc")); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]string{
		{"operation=lookup", "path=/etc/hosts"},
		{"operation=open", "path=/etc/hosts"},
		{"operation=read", "path=/etc/hosts"},
		{"operation=opendir", "path=/etc"},
	} {
		if logged.count(append([]string{`msg="FUSE operation"`, "level=debug"}, want...)...) == 0 {
			t.Errorf("no FUSE operation line with %v in:\n%s", want, logged.String())
		}
	}
}

// TestDebugLog: with a DebugLog go-fuse's trace of requests reaches it, one
// debug line each ("debug" in the configuration).
func TestDebugLog(t *testing.T) {
	var b tocBuilder
	b.file("f", "x")
	var logged syncBuffer
	dir := mountWith(t, &b, Options{}, MountConfig{DebugLog: debugEntry(&logged)})
	if _, err := os.Stat(filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	if logged.count("level=debug", "LOOKUP") == 0 {
		t.Errorf("no go-fuse LOOKUP trace in:\n%s", logged.String())
	}
}

// TestNegativeTimeoutReachesKernel: the kernel answers repeated lookups of
// a missing name from its cache for as long as NegativeTimeout says: with
// a long one the tree sees a single lookup, with a 1ns one it sees them
// again.
func TestNegativeTimeoutReachesKernel(t *testing.T) {
	lookups := func(mc MountConfig, stats int, until int) int {
		var b tocBuilder
		b.file("present", "x")
		var logged syncBuffer
		dir := mountWith(t, &b, Options{OperationLog: debugEntry(&logged)}, mc)
		missing := filepath.Join(dir, "missing")
		n := 0
		for i := 0; i < stats; i++ {
			if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("stat of a missing name: %v", err)
			}
			if n = logged.count("operation=lookup", "path=/missing"); until > 0 && n >= until {
				break
			}
		}
		return n
	}
	if n := lookups(MountConfig{NegativeTimeout: time.Hour}, 50, 0); n != 1 {
		t.Errorf("negative_timeout 1h: the tree saw %d lookups of a missing name, want 1", n)
	}
	// The kernel's clock ticks at least every 10ms; 100000 stats take
	// far longer than that.
	if n := lookups(MountConfig{NegativeTimeout: time.Nanosecond}, 100000, 2); n < 2 {
		t.Errorf("negative_timeout 1ns: the tree saw %d lookups of a missing name, want them repeated", n)
	}
}

// TestAttrTimeoutReachesKernel: with a long attr and entry timeout repeated
// stats of a file are answered by the kernel; with 1ns they reach the tree.
func TestAttrTimeoutReachesKernel(t *testing.T) {
	calls := func(mc MountConfig, stats, until int) int {
		var b tocBuilder
		b.file("f", "x")
		var logged syncBuffer
		dir := mountWith(t, &b, Options{OperationLog: debugEntry(&logged)}, mc)
		n := 0
		for i := 0; i < stats; i++ {
			if _, err := os.Stat(filepath.Join(dir, "f")); err != nil {
				t.Fatal(err)
			}
			n = logged.count("path=/f", "operation=getattr") + logged.count("path=/f", "operation=lookup")
			if until > 0 && n >= until {
				break
			}
		}
		return n
	}
	if n := calls(MountConfig{AttrTimeout: time.Hour, EntryTimeout: time.Hour}, 50, 0); n != 1 {
		t.Errorf("attr/entry timeout 1h: the tree saw %d lookups and getattrs, want 1", n)
	}
	if n := calls(MountConfig{AttrTimeout: time.Nanosecond, EntryTimeout: time.Nanosecond}, 100000, 3); n < 3 {
		t.Errorf("attr/entry timeout 1ns: the tree saw %d lookups and getattrs, want them repeated", n)
	}
}
