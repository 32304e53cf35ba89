// Package remote is the registry access used by every fetch of the flow in
// docs/architecture.md: manifests and the referrers list for discovery (step 2), zTOCs
// and other small blobs (step 3), and HTTP range reads of layer blobs for
// on-demand and background reads (steps 5 and 6).
//
// Hosts are configured the way containerd configures them: hosts.toml
// directories (mirrors first, then the origin), TLS material, extra headers,
// and a credentials callback, through containerd's docker.RegistryHost and
// Authorizer. Registries on loopback addresses and hosts listed as insecure
// are reached over plain HTTP. Requests are our own: each is authorized,
// re-authorized once after a 401 or 403 challenge, retried a bounded number
// of times on transient failures, and bounded in time.
package remote
