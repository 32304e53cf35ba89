package index

import (
	"math/rand"
	"os"
	"testing"
	"time"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"
)

func TestDebugSlow(t *testing.T) {
	small := buildTar(t, testEntries(1<<10))
	_, plain := buildZTOC(t, small, 64<<10, compression.Uncompressed)
	_, gz := buildZTOC(t, gzipMembers(t, buildTar(t, testEntries(70<<10))), 64<<10, compression.Gzip)
	r := rand.New(rand.NewSource(1))
	for it := 0; it < 200000; it++ {
		seed := plain
		if it%2 == 0 {
			seed = gz
		}
		d := append([]byte{}, seed...)
		for k := 0; k < 1+r.Intn(4); k++ {
			i := r.Intn(len(d))
			switch r.Intn(3) {
			case 0:
				d[i] ^= 1 << r.Intn(8)
			case 1:
				d[i] = byte(r.Intn(256))
			case 2:
				d[i] = 0xff
			}
		}
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			z, err := decodeZTOC(d)
			if err == nil {
				Convert(z)
			}
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			os.WriteFile("/tmp/slow.bin", d, 0o600)
			t.Fatalf("iteration %d slow (%v)", it, time.Since(start))
		}
	}
}
