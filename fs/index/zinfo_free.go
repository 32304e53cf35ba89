package index

// #include <stdlib.h>
import "C"

import (
	"unsafe"

	"github.com/awslabs/soci-snapshotter/ztoc/compression"
)

// freeZinfo releases a gzip zinfo. soci's GzipZinfo.Close frees the C
// struct gzip_zinfo but not its checkpoint list (32 KiB per span), which
// would leak with every closed layer. Before Close, this frees the list
// too, but only when the struct looks exactly as gzip_zinfo.h (v0.16.1)
// lays it out on a 64-bit little-endian host:
//
//	struct gzip_zinfo { int32 version, have, size; checkpoint *list; int64 span_size; }
//
// with the values this zinfo was loaded with; otherwise it leaks the list
// rather than risk freeing something else. It reports whether it freed it.
func freeZinfo(zi compression.Zinfo, count int, spanSize int64) bool {
	freed := false
	if gz, ok := zi.(*compression.GzipZinfo); ok && gz != nil {
		p := *(*unsafe.Pointer)(unsafe.Pointer(gz)) // GzipZinfo{cZinfo *C.struct_gzip_zinfo}
		if p != nil && unsafe.Sizeof(uintptr(0)) == 8 && zinfoLayoutMatches(p, count, spanSize) {
			list := (*unsafe.Pointer)(unsafe.Add(p, 16))
			C.free(*list)
			*list = nil
			freed = true
		}
	}
	zi.Close()
	return freed
}

func zinfoLayoutMatches(p unsafe.Pointer, count int, spanSize int64) bool {
	version := *(*int32)(p)
	have := *(*int32)(unsafe.Add(p, 4))
	size := *(*int32)(unsafe.Add(p, 8))
	span := *(*int64)(unsafe.Add(p, 24))
	return (version == 1 || version == 2) && int(have) == count && int(size) == count && span == spanSize
}
