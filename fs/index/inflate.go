package index

// Inflating one gzip span from its checkpoint with zlib.
//
// A span starts at a deflate block boundary: at a byte, or inside the byte
// before (the checkpoint's bits, 1-7, are that byte's top bits). zlib's raw
// inflate resumes there when primed with those bits and given the 32 KiB
// window the stream had before the checkpoint. The output is exactly the
// span's length: inflate stops when it is full, and running out of input
// before that (a zTOC that lies about the span's sizes, or junk input) is
// an error, never a wait for more. A span may cross the end of a gzip
// member (a multi-member stream): the member's 8-byte trailer is skipped
// and inflate goes on with the next member, header included.

/*
#cgo LDFLAGS: -l:libz.a
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

// soci_span_inflate fills out (out_len bytes) from in, a raw deflate stream
// resuming with the top bits of in[0] when bits > 0, and the window win.
// It returns 0 when out is full, else a zlib error (Z_BUF_ERROR: input
// ended first).
static int soci_span_inflate(const unsigned char *in, size_t in_len, int bits,
                             const unsigned char *win, unsigned char *out, size_t out_len) {
	z_stream s;
	memset(&s, 0, sizeof(s));
	int ret = inflateInit2(&s, -15);
	if (ret != Z_OK)
		return ret;
	if (bits > 0) {
		if (in_len == 0) {
			inflateEnd(&s);
			return Z_BUF_ERROR;
		}
		ret = inflatePrime(&s, bits, in[0] >> (8 - bits));
		in++;
		in_len--;
		if (ret != Z_OK)
			goto done;
	}
	ret = inflateSetDictionary(&s, win, 32768);
	if (ret != Z_OK)
		goto done;
	s.next_out = out;
	int raw = 1;
	while (out_len > 0) {
		// avail_in and avail_out are 32-bit: feed at most 1 GiB at a time.
		if (s.avail_in == 0 && in_len > 0) {
			size_t n = in_len < (1u << 30) ? in_len : (1u << 30);
			s.next_in = (unsigned char *)in;
			s.avail_in = (uInt)n;
			in += n;
			in_len -= n;
		}
		size_t want = out_len < (1u << 30) ? out_len : (1u << 30);
		s.avail_out = (uInt)want;
		ret = inflate(&s, Z_NO_FLUSH);
		size_t got = want - s.avail_out;
		out_len -= got;
		if (out_len == 0)
			break;
		if (ret == Z_STREAM_END) {
			// The end of a gzip member: skip the raw stream's trailer
			// (a gzip-mode inflate reads its own), then read the next
			// member with its header.
			if (raw) {
				size_t drop = 8;
				size_t have = s.avail_in;
				if (have >= drop) {
					s.next_in += drop;
					s.avail_in -= drop;
				} else {
					drop -= have;
					s.avail_in = 0;
					if (in_len < drop) {
						ret = Z_BUF_ERROR;
						goto done;
					}
					in += drop;
					in_len -= drop;
				}
				raw = 0;
			}
			ret = inflateReset2(&s, 16 + 15);
			if (ret != Z_OK)
				goto done;
			continue;
		}
		if (ret == Z_NEED_DICT)
			ret = Z_DATA_ERROR;
		if (ret != Z_OK && ret != Z_BUF_ERROR)
			goto done;
		// zlib answers Z_BUF_ERROR when it can make no progress: the
		// input ended before the output was full.
		if (ret == Z_BUF_ERROR && got == 0 && s.avail_in == 0 && in_len == 0)
			goto done;
	}
	ret = 0;
done:
	inflateEnd(&s);
	return ret;
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// inflateSpan fills out with the inflated bytes of in, a span's compressed
// bytes that resume a deflate stream after the window win (windowSize
// bytes) with the top bits of in[0] when bits > 0.
func inflateSpan(in []byte, bits uint8, win, out []byte) error {
	if len(win) != windowSize {
		return fmt.Errorf("inflate: window of %d bytes", len(win))
	}
	if bits > 7 {
		return fmt.Errorf("inflate: %d bits", bits)
	}
	if len(out) == 0 {
		return nil
	}
	var inp *C.uchar
	if len(in) > 0 {
		inp = (*C.uchar)(unsafe.Pointer(&in[0]))
	}
	ret := C.soci_span_inflate(inp, C.size_t(len(in)), C.int(bits),
		(*C.uchar)(unsafe.Pointer(&win[0])), (*C.uchar)(unsafe.Pointer(&out[0])), C.size_t(len(out)))
	if ret != 0 {
		return fmt.Errorf("inflate: %s (zlib %d)", zlibError(int(ret)), int(ret))
	}
	return nil
}

func zlibError(ret int) string {
	switch ret {
	case C.Z_BUF_ERROR:
		return "the compressed bytes end before the span does"
	case C.Z_DATA_ERROR:
		return "invalid deflate data"
	case C.Z_MEM_ERROR:
		return "out of memory"
	case C.Z_STREAM_ERROR:
		return "bad stream state"
	}
	return "failed"
}
