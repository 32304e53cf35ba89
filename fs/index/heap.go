package index

import (
	"errors"
	"fmt"

	fbs "github.com/awslabs/soci-snapshotter/ztoc/fbs/ztoc"
)

// The heap cost model of a zTOC: what decoding it (soci's unmarshaler),
// converting it, loading its checkpoints and building the layer's tree
// allocate, in bytes. The constants are upper bounds measured on amd64
// (TestHeapEstimate checks them against runtime.MemStats for several
// shapes of zTOC).
const (
	// entryHeap is per file entry: ztoc.FileMetadata (176 bytes) and its
	// PAX map, layer.Entry (136), the tree's node (112) and dirents (the
	// append-grown list and the packed copy), directory name indexes, one
	// implicit parent directory (the tree builder allows no more than one
	// per entry on average) and the decoder's short-lived garbage.
	entryHeap = 1024
	// stringHeap is per string besides its bytes: allocation rounding.
	stringHeap = 16
	// xattrHeap is per extended attribute: its slots in the decoded PAX
	// map and in the converted xattr map.
	xattrHeap = 320
	// spanHeap is per span: the digest string, span.Span, the parsed
	// checkpoint and its window's bits and digest.
	spanHeap = 512
	// readFactor is per byte of the flatbuffer: the store's own copy (read
	// from disk or the registry), which the decoder refers to instead of
	// copying it (decodeFlatbuffer), and as much again for the registry
	// client's read of it.
	readFactor = 2
	// xattrFactor is per byte of an extended attribute's key and value:
	// the decoded string, which stays live with the layer, and the
	// garbage the collector lets pile up beside it (GOGC=100 lets the heap
	// grow to twice its live size before a cycle). Measured, not derived:
	// with one, xattr-heavy zTOCs peaked above their estimate.
	xattrFactor = 3
)

// budget bounds the work and memory of decoding a flatbuffer of n bytes.
// A flatbuffer built without shared data needs 4 bytes per vector element,
// and every string it holds is stored in it; a hostile one could point many
// elements at one big string or vector, so decoding it would take memory
// quadratic in its size. heap sums the cost model above.
type budget struct {
	slots, bytes int
	heap         int64
}

func newBudget(n int) budget { return budget{slots: n / 4, bytes: 4*n + 1<<20} }

func (b *budget) take(slots, bytes int) error {
	b.slots -= slots
	b.bytes -= bytes
	if b.slots < 0 || b.bytes < 0 {
		return errors.New("decode zTOC: vectors or strings larger than the flatbuffer")
	}
	return nil
}

// checkFlatbuffer walks a zTOC flatbuffer the way ztoc.Unmarshal will and
// fails when that would allocate or loop out of proportion to its size,
// when it has more than lim.MaxZTOCEntries entries (checked before any is
// read), or when the estimated heap of loading it exceeds
// lim.MaxZTOCHeapBytes. It returns the estimate.
func checkFlatbuffer(buf []byte, lim Limits) (heap int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode zTOC: malformed flatbuffer: %v", r)
		}
	}()
	if len(buf) < 8 {
		return 0, fmt.Errorf("decode zTOC: %d bytes is too short", len(buf))
	}
	root := fbs.GetRootAsZtoc(buf, 0)
	toc := root.Toc(new(fbs.TOC))
	info := root.CompressionInfo(new(fbs.CompressionInfo))
	if toc == nil || info == nil {
		return 0, errors.New("decode zTOC: no TOC or compression info")
	}
	n, spans := toc.MetadataLength(), info.SpanDigestsLength()
	if n > lim.MaxZTOCEntries {
		return 0, fmt.Errorf("decode zTOC: %d entries, more than limits.max_ztoc_entries (%d)", n, lim.MaxZTOCEntries)
	}
	b := newBudget(len(buf))
	if err := b.take(n+spans, len(root.Version())+len(root.BuildToolIdentifier())); err != nil {
		return 0, err
	}
	// The checkpoints are read where they are: in buf, then in the file.
	b.heap = readFactor*int64(len(buf)) + int64(n)*entryHeap + int64(spans)*spanHeap +
		int64(len(root.Version())+len(root.BuildToolIdentifier())) + 2*stringHeap
	for j := range spans {
		if err := b.take(0, len(info.SpanDigests(j))); err != nil {
			return 0, err
		}
		b.heap += int64(len(info.SpanDigests(j)))
	}
	var md fbs.FileMetadata
	for i := range n {
		toc.Metadata(&md, i)
		if err := checkEntryBudget(&md, &b); err != nil {
			return 0, err
		}
		if b.heap > lim.MaxZTOCHeapBytes {
			break
		}
	}
	if b.heap > lim.MaxZTOCHeapBytes {
		return 0, fmt.Errorf("decode zTOC: loading it would take an estimated %d bytes of memory or more, more than limits.max_ztoc_heap_bytes (%d)",
			b.heap, lim.MaxZTOCHeapBytes)
	}
	return b.heap, nil
}

// checkEntryBudget takes one entry's strings and xattrs from b. Names and
// link targets count twice: conversion may clean them into new strings;
// xattr bytes count xattrFactor times.
func checkEntryBudget(md *fbs.FileMetadata, b *budget) error {
	name, link := len(md.Name()), len(md.Linkname())
	other := len(md.Type()) + len(md.Uname()) + len(md.Gname())
	if err := b.take(md.XattrsLength(), name+link+other+len(md.ModTime())); err != nil {
		return err
	}
	b.heap += 2*int64(name+link) + int64(other) + 5*stringHeap
	var x fbs.Xattr
	for j := range md.XattrsLength() {
		md.Xattrs(&x, j)
		k, v := len(x.Key()), len(x.Value())
		if err := b.take(0, k+v); err != nil {
			return err
		}
		b.heap += xattrFactor*int64(k+v) + xattrHeap
	}
	return nil
}
