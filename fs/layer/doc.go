// Package layer is step 4 of the flow in docs/architecture.md: the read-only go-fuse
// tree of one layer, built from its TOC. File reads go to a Reader over the
// layer's uncompressed tar stream.
package layer
