package index

import "testing"

func TestPadBufferZeroedAndWritable(t *testing.T) {
	for _, n := range []int{1, mmapPad - 1, mmapPad, 3*mmapPad + 5} {
		b, free, err := padBuffer(n)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if len(b) != n {
			t.Fatalf("%d bytes: got %d", n, len(b))
		}
		for i, c := range b {
			if c != 0 {
				t.Fatalf("%d bytes: byte %d is %d", n, i, c)
			}
		}
		b[0], b[n-1] = 1, 2
		free()
	}
}
