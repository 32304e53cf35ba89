package index

// Padding the input of soci's C inflate.
//
// extract_data_from_buffer in soci's gzip_zinfo.c has two flaws with input
// that is exactly one span: it reads one byte past the input when the span
// starts inside a byte, and it loops forever when the input ends before the
// output is full, which a zTOC that lies about a span's sizes can arrange.
// So Decompress appends padding to the span's bytes:
//
//  1. A "stopper": the bits that complete the header of the deflate block
//     that follows the span (whose first bits may be the top bits of the
//     span's last byte) and one literal, match or stored byte. With an
//     honest zTOC the output is full when inflate reaches the end of the
//     span; zlib then still decodes the next block header and one symbol
//     before it notices, and the stopper makes that decode valid and stops
//     it inside the block, so it never reaches a block end (zero padding
//     would often be an invalid header, and the end of a final block would
//     make zlib check a gzip trailer against the padding).
//  2. Zeros: with a lying zTOC inflate runs on into the padding, and from
//     any state zero bits end it: a stored block copies at most 64 KiB of
//     them, each Huffman symbol decoded from zero bits is output or an end
//     of block, an all-zero block header is an invalid stored block and an
//     all-zero gzip header an invalid one. A match or literal needs at most
//     15 bits per output byte, so two bytes per wanted output byte plus the
//     slack suffice: the span comes out wrong or fails, never hangs.

// padSlack covers a stored block, a dynamic header and the stopper.
const padSlack = 128 << 10

// stopper returns the padding bits described above for a span followed by
// a block whose first b bits are the top b bits of last (b == 0: the block
// starts after the span).
func stopper(last byte, b uint8) []byte {
	s := contWriter{skip: int(b), known: uint32(last) >> (8 - b)}
	final, t0, t1 := s.known&1, uint32(1), uint32(0) // default: fixed Huffman
	if b >= 2 {
		t0 = s.known >> 1 & 1
	}
	if b >= 3 {
		t1 = s.known >> 2 & 1
	}
	s.bits(final, 1)
	s.bits(t0, 1)
	s.bits(t1, 1)
	switch t0 | t1<<1 {
	case 0:
		// A stored block of one byte: zlib stops in it with the output
		// full. (An empty one would let it go on to the end of a final
		// block and check the gzip trailer against the padding.)
		s.align()
		s.bits(0x0001, 16) // LEN
		s.bits(0xfffe, 16) // NLEN, its complement
		s.bits(0, 8)
	case 1:
		s.fixedSymbol()
	case 2:
		s.dynamicHeader()
		s.code(0, 1) // literal 0
	}
	return s.w.buf
}

// contWriter writes the continuation of a bit stream whose first skip bits
// (known, least significant first) are already in the span: writing those
// positions checks nothing and emits nothing.
type contWriter struct {
	w     bitWriter
	skip  int
	known uint32
	pos   int // bits written or skipped
}

func (s *contWriter) bit(b uint32) {
	if s.pos >= s.skip {
		s.w.bit(b)
	}
	s.pos++
}

func (s *contWriter) bits(v uint32, n int) {
	for i := range n {
		s.bit(v >> i)
	}
}

func (s *contWriter) code(c uint32, n int) {
	for i := n - 1; i >= 0; i-- {
		s.bit(c >> i)
	}
}

// align pads to a byte boundary; the known bits end on one.
func (s *contWriter) align() {
	for (s.pos-s.skip)%8 != 0 || s.pos < s.skip {
		s.bit(0)
	}
}

// knownCode returns the known bits after the block header, in the order a
// Huffman code is read (most significant bit first), and their count.
func (s *contWriter) knownCode() (uint32, int) {
	n := max(s.skip-3, 0)
	var c uint32
	for i := range n {
		c = c<<1 | s.known>>(3+i)&1
	}
	return c, n
}

// fixedSymbol writes a fixed-Huffman literal, or a match of distance 1,
// whose code begins with the known bits.
func (s *contWriter) fixedSymbol() {
	prefix, n := s.knownCode()
	for sym := range 286 {
		c, l := fixedCode(sym)
		if sym == 256 || c>>(l-n) != prefix {
			continue
		}
		s.code(c, l)
		if sym > 256 {
			s.bits(0, lengthExtra(sym))
			s.code(0, 5) // distance code 0: distance 1
		}
		return
	}
}

// dynamicHeader writes a dynamic block header whose literal/length code has
// two codes, literal 0 ("0") and end of block ("1"), and no distance codes.
// Its HLIT may have known low bits; the rest are zero.
func (s *contWriter) dynamicHeader() {
	hlit := s.known >> 3 & (1<<max(s.skip-3, 0) - 1)
	s.bits(hlit, 5)
	s.bits(0, 5)  // HDIST: one distance code
	s.bits(15, 4) // HCLEN: 19 code length codes
	// Code length codes in the order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2
	// 14 1 15: 18 (zero run) has code 0, 0 has code 10, 1 has code 11.
	for _, l := range [19]uint32{0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0} {
		s.bits(l, 3)
	}
	s.code(0b11, 2) // literal 0: length 1
	s.code(0b0, 1)
	s.bits(138-11, 7) // literals 1-138: unused
	s.code(0b0, 1)
	s.bits(117-11, 7) // literals 139-255: unused
	s.code(0b11, 2)   // end of block: length 1
	for range int(hlit) + 1 {
		s.code(0b10, 2) // lengths 257.. and the distance code: unused
	}
}

// fixedCode returns the fixed-Huffman code of a literal/length symbol.
func fixedCode(sym int) (uint32, int) {
	switch {
	case sym < 144:
		return uint32(0x30 + sym), 8
	case sym < 256:
		return uint32(0x190 + sym - 144), 9
	case sym < 280:
		return uint32(sym - 256), 7
	default:
		return uint32(0xc0 + sym - 280), 8
	}
}

// lengthExtra is the number of extra bits of a length symbol.
func lengthExtra(sym int) int {
	if sym < 265 || sym == 285 {
		return 0
	}
	return (sym - 261) / 4
}

// bitWriter writes a deflate bit stream: values least significant bit
// first, Huffman codes most significant bit first.
type bitWriter struct {
	buf []byte
	n   int // bits written
}

func (w *bitWriter) bit(b uint32) {
	if w.n%8 == 0 {
		w.buf = append(w.buf, 0)
	}
	w.buf[len(w.buf)-1] |= byte(b&1) << (w.n % 8)
	w.n++
}
