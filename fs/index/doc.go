// Package index is steps 2 and 3 of the flow in docs/architecture.md: it finds the SOCI
// index of an image (explicit label, v2 manifest annotation, v1 referrers),
// fetches and verifies the zTOC of a layer, keeps both on local disk, and
// converts the zTOC into our own TOC and span table. It is the only package
// that imports soci-snapshotter's ztoc code and the only cgo user.
//
// Everything read from a registry, from containerd's content store or from
// disk is untrusted: digests are checked, the zTOC flatbuffer is bounded
// before it is decoded, and Convert validates every offset, size, name and
// type before a span is inflated (zlib, through cgo).
package index
