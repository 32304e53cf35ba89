// Package version holds the release and commit stamped into the binaries
// at link time by the Makefile (-ldflags -X).
package version

// These are set by the linker; they are never written at run time.
var (
	// Version is the release, "vX.Y.Z".
	Version = "v0.17.0-dev"
	// Revision is the git commit the binary was built from.
	Revision = "unknown"
)
