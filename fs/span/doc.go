// Package span is step 5 of the flow in docs/architecture.md: uncompressed reads over a
// compressed layer blob. It maps offsets to spans, fetches missing spans from
// the registry (adjacent ones in one range request, one fetch per span shared
// by all readers), verifies each span's digest, decompresses it from its
// checkpoint and caches it.
package span
