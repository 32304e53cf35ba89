package index

// Gzip reports whether the zTOC says the layer blob is gzip-compressed
// (otherwise it is an uncompressed tar stream).
func (l *Layer) Gzip() bool { return l.gzip }
