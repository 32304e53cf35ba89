// Package cache is the span cache of step 5 of the flow in docs/architecture.md: it keeps
// the uncompressed data of fetched spans, keyed by what produced it (layer digest,
// zTOC digest and uncompressed range: inflate also depends on the zTOC's
// checkpoint windows), so images sharing a layer and its zTOC share entries,
// another zTOC of the layer cannot poison them, and a restart needs no
// refetch. Disk is the real cache, optionally bounded in size (whole
// layers evicted least recently used first, mounted ones last); Memory is
// an in-memory implementation for tests.
//
// Keys are slash-separated; a ':' also separates (so "sha256:ab/0-10" is
// stored as sha256/ab/0-10 and names the same entry as "sha256/ab/0-10").
// Empty, "." or ".." components, components starting with '.', absolute keys
// and NUL bytes are rejected with errdefs.ErrInvalidArgument. A key must not
// also be a prefix of another key (it cannot be both a file and a directory).
package cache
