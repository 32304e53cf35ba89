// Package index is steps 2 and 3 of the flow in DESIGN.md: it finds the SOCI
// index of an image (explicit label, v2 manifest annotation, v1 referrers),
// fetches and verifies the zTOC of a layer, keeps both on local disk, and
// converts the zTOC into our own TOC and span table. It is the only package
// that imports soci-snapshotter's ztoc code (and so the only cgo user).
package index

import (
	_ "github.com/awslabs/soci-snapshotter/soci"
	_ "github.com/awslabs/soci-snapshotter/ztoc"
	_ "github.com/hanwen/go-fuse/v2/fs"
)
