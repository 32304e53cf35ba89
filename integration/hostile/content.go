package hostile

import (
	"fmt"
	"math/rand/v2"
)

// words make TextContent compressible.
var words = []string{"span", "window", "checkpoint", "inflate", "layer", "registry", "digest", "zTOC",
	"index", "mount", "cache", "honest", "hostile", "daemon", "snapshot", "container"}

// TextContent is n bytes of deterministic text lines built from a small
// vocabulary: deflate encodes most of it as references up to 32 KiB back,
// so the output after a checkpoint depends on the checkpoint's window
// (incompressible data would be stored verbatim and ignore the window).
func TextContent(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]byte, 0, n+128)
	for line := 0; len(out) < n; line++ {
		out = fmt.Appendf(out, "%07d", line)
		for range 8 {
			out = append(out, ' ')
			out = append(out, words[r.IntN(len(words))]...)
		}
		out = append(out, '\n')
	}
	return out[:n]
}
