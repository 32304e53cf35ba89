package index

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// mmapPad is the input size from which padBuffer maps its buffer instead of
// allocating it on the heap.
const mmapPad = 1 << 20

// padBuffer returns a zeroed buffer of n bytes for the C inflate's padded
// input (pad.go) and the function that frees it. The padding is two bytes
// per output byte, but an honest span's inflate stops a few bytes into it:
// large buffers are private anonymous mappings, whose pages that are never
// written take no memory (reads of them see the shared zero page), so a
// span costs about its compressed size instead of three times its length.
// They are unmapped at once, outside the Go heap and its GC.
func padBuffer(n int) ([]byte, func(), error) {
	if n < mmapPad {
		return make([]byte, n), func() {}, nil
	}
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, nil, fmt.Errorf("map a %d-byte inflate buffer: %w", n, err)
	}
	return b, func() { _ = unix.Munmap(b) }, nil
}
