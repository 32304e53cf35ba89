package layer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// localMem is a LocalReader over a memReader's stream with a switch.
type localMem struct {
	r     *memReader
	local bool
}

func (l *localMem) ReadLocal(ctx context.Context, p []byte, off int64) bool {
	if !l.local || off+int64(len(p)) > int64(len(l.r.data)) {
		return false
	}
	copy(p, l.r.data[off:])
	return true
}

func (l *localMem) Has(ctx context.Context, off, n int64) bool { return l.local }

// TestStoreRestOneRead: with Options.Local, the first read of a file of at
// most StoreMaxBytes hands the kernel the rest of it: one READ per file,
// the bytes right; not when the rest is not local, nor for larger files.
func TestStoreRestOneRead(t *testing.T) {
	requireFUSE(t)
	content := func(i, size int) string {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(i*7 + j*13 + j>>9)
		}
		return string(b)
	}
	for _, tc := range []struct {
		name  string
		size  int
		local bool
		max   int // READ requests per file at most
		min   int // and at least
	}{
		{name: "small local", size: StoreMaxBytes, local: true, max: 1, min: 1},
		{name: "odd size local", size: 100<<10 + 123, local: true, max: 1, min: 1},
		{name: "not local", size: StoreMaxBytes, local: false, min: 2, max: 4},
		{name: "large local", size: StoreMaxBytes + 4096, local: true, min: 2, max: 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const files = 4
			var tb tocBuilder
			for i := range files {
				tb.file(fmt.Sprintf("f%d", i), content(i, tc.size))
			}
			root, err := NewRoot(tb.toc, &tb.r, Options{Local: &localMem{r: &tb.r, local: tc.local}})
			if err != nil {
				t.Fatal(err)
			}
			dir, c := mountCounting(t, root)
			c.take()
			for i := range files {
				f, err := os.Open(filepath.Join(dir, fmt.Sprintf("f%d", i)))
				if err != nil {
					t.Fatal(err)
				}
				var got bytes.Buffer
				_, err = io.CopyBuffer(struct{ io.Writer }{&got}, struct{ io.Reader }{f}, make([]byte, 8<<10))
				f.Close()
				if err != nil || got.String() != content(i, tc.size) {
					t.Fatalf("file %d: %d bytes, %v; content differs: %v", i, got.Len(), err, got.String() != content(i, tc.size))
				}
				if n := c.take()["read"]; n < tc.min || n > tc.max {
					t.Errorf("file %d: %d READ requests, want %d to %d", i, n, tc.min, tc.max)
				}
			}
		})
	}
}

// TestStoreRestConcurrent: readers racing over the same small files, some
// of them reading the rest first, all get the right bytes.
func TestStoreRestConcurrent(t *testing.T) {
	requireFUSE(t)
	const files, readers = 16, 4
	var tb tocBuilder
	want := make([]string, files)
	for i := range files {
		want[i] = strings.Repeat(string(rune('a'+i)), StoreMaxBytes-i*1000)
		tb.file(fmt.Sprintf("f%d", i), want[i])
	}
	root, err := NewRoot(tb.toc, &tb.r, Options{Local: &localMem{r: &tb.r, local: true}})
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := mountCounting(t, root)
	errs := make(chan error, readers)
	for r := range readers {
		go func() {
			for k := range files {
				i := (k + r*5) % files
				f, err := os.Open(filepath.Join(dir, fmt.Sprintf("f%d", i)))
				if err != nil {
					errs <- err
					return
				}
				// Odd readers start in the middle, racing the store.
				off := int64(r%2) * int64(len(want[i])/2)
				got, err := io.ReadAll(io.NewSectionReader(f, off, int64(len(want[i]))-off))
				f.Close()
				if err != nil || string(got) != want[i][off:] {
					errs <- fmt.Errorf("reader %d, file %d from %d: %d bytes, %v", r, i, off, len(got), err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range readers {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
