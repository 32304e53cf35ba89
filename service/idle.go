package service

import (
	"context"
	"net/http"

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

// touching serves h and touches rel after each request: a process's calls
// are its bursts of work.
func touching(h http.Handler, rel *idlemem.Releaser) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer rel.Touch()
		h.ServeHTTP(w, r)
	})
}
