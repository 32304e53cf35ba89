package span

import "testing"

// BenchmarkWindowDigest is the cost of one checkpoint window check (two
// per span decompressed: its own window and its successor's).
func BenchmarkWindowDigest(b *testing.B) {
	tail := make([]byte, 1<<20)
	b.SetBytes(WindowSize)
	for range b.N {
		if _, ok := WindowDigest(5<<20, tail); !ok {
			b.Fatal("not checkable")
		}
	}
}
