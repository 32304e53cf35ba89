// Package span is step 5 of the flow in docs/architecture.md: uncompressed reads over a
// compressed layer blob. It maps offsets to spans, fetches missing spans from
// the registry (adjacent ones in one range request, one fetch per span shared
// by all readers), verifies each span's digest, decompresses it from its
// checkpoint and caches it.
//
// The parts, one concern each:
//   - Table and Table.Run: the span layout, and the one rule that groups
//     adjacent spans into a request (used by demand fetches, read-ahead and
//     fs/background's walk). ReadFull and CheckRead: the one rule for short
//     reads of a Fetcher.
//   - core (core.go, fetch.go, window.go, failures.go): single-flight
//     fetches, verification, inflate within the DecompressLimit, the cache
//     fill and the fail hold.
//   - readAhead (readahead.go): the read-ahead policy, and neighbours
//     (neighbours.go): the policy for scattered misses; they decide, the
//     core fetches (counted as demand while it does).
//   - Manager (manager.go): serves reads (FetchAt) through the core and the
//     policy, and reports them to the Observer and Demand.
//   - Loader (loader.go): the background walk's way into the same core
//     (step 6), consumed by fs/background as its Spans interface.
package span
