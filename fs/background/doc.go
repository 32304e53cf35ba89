// Package background is step 6 of the flow in docs/architecture.md: one scheduler per
// node that makes lazily mounted layers fully local while the link is idle.
//
// Demand reads come first. They do not go through the scheduler at all: the
// span managers tell it (BeginDemand, EndDemand) while a read waits for the
// registry, and every worker checks before each chunk, so a demand read
// waits behind at most one range request per worker. Queued layers start in
// the order they came.
//
// A worker walks its layer's blob in order, one range request per chunk of
// spans (span.Table.Run), hands the bytes to the layer's span manager
// through its Spans (span.Loader: it verifies each span, inflates and
// caches it) and hashes them, so that at the end the
// whole blob is checked against the layer digest (the gzip header before
// the first span and the trailer after the last included, the one-byte
// overlaps between gzip spans hashed once).
package background
