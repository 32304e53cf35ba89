package service

import (
	"context"

	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/internal/idlemem"
)

// releaseExecutable unmaps the executable's pages once the process is at
// rest (idlemem.ReleaseExecutable). A failure costs memory, not
// correctness: it is logged at Debug, as the release is.
func releaseExecutable(ctx context.Context, why string) {
	n, err := idlemem.ReleaseExecutable()
	l := log.G(ctx).WithField("bytes", n)
	if err != nil {
		l.WithError(err).Debug(why + ": could not unmap the executable's pages")
		return
	}
	l.Debug(why + ": unmapped the executable's resident pages (they stay in the page cache)")
}
