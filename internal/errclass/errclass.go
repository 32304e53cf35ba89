// Package errclass holds the error classes of this project that cross the
// daemon / FUSE host boundary beside containerd's errdefs classes (package
// fusehost gives each a name on the wire).
package errclass

import "github.com/containerd/errdefs"

// ErrNoIndex is the class of a layer that is not served lazily because its
// image has no SOCI index. It is a NotFound too (errdefs.IsNotFound holds),
// so code that knows only errdefs treats it as any layer not served
// lazily; parallel pull's fallback mode tells it apart from a layer without
// zTOC in an indexed image.
var ErrNoIndex error = noIndex{}

type noIndex struct{}

func (noIndex) Error() string { return "not found" }
func (noIndex) Unwrap() error { return errdefs.ErrNotFound }
