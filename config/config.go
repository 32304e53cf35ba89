package config

import "strings"

const (
	// DefaultConfigPath is where the daemon looks for its configuration file
	// when no path is given on the command line.
	DefaultConfigPath = "/etc/soci-snapshotter-grpc/config.toml"

	// DefaultRootPath is the daemon's default state directory.
	DefaultRootPath = "/var/lib/soci-snapshotter-grpc"

	// DefaultAddress is the default unix socket the daemon serves gRPC on.
	DefaultAddress = "/run/soci-snapshotter-grpc/soci-snapshotter-grpc.sock"

	// DefaultContainerdAddress is containerd's default socket, used both as
	// the containerd content store address and as the CRI image service.
	DefaultContainerdAddress = "/run/containerd/containerd.sock"

	// DefaultHostsDir is where containerd keeps per-registry hosts.toml
	// files: the default of [resolver] config_path.
	DefaultHostsDir = "/etc/containerd/certs.d"

	// DefaultContentStoreNamespace is the containerd namespace used by the
	// containerd content store unless configured otherwise.
	DefaultContentStoreNamespace = "default"

	// Unbounded is the value of a parallel-pull limit or chunk size that
	// means "no limit".
	Unbounded = -1
)

// CacheTypeMemory is the value of Config.FSCacheType (and HTTPCacheType)
// that keeps cached data in memory; the empty string caches on disk.
const CacheTypeMemory = "memory"

// Values accepted by Config.MetricsNetwork.
const (
	NetworkTCP  = "tcp"
	NetworkUnix = "unix"
)

// MetricsNetworks are the values of metrics_network that net.Listen
// accepts for a stream listener; upstream passes them through to it.
var MetricsNetworks = []string{NetworkTCP, "tcp4", "tcp6", NetworkUnix, "unixpacket"}

// CacheTypeDirectory is the filesystem_cache_type upstream's docs name for
// caching on disk; upstream reads any value but CacheTypeMemory so.
const CacheTypeDirectory = "directory"

// Values accepted by Config.MetadataStore.
const (
	// MetadataStoreDB keeps all layers' metadata in one bbolt database.
	MetadataStoreDB = "db"
	// MetadataStoreDBMulti keeps one bbolt database per layer.
	MetadataStoreDBMulti = "db-multi"
)

// Values accepted by BackgroundFetchConfig.DropPolicy.
const (
	// DropOldest evicts the entry that has been queued the longest.
	DropOldest = "oldest"
	// DropNewest discards the entry being added.
	DropNewest = "newest"
)

// ContentStoreType names where fetched content (indexes, zTOCs, layers) is
// stored.
type ContentStoreType string

// Values accepted by ContentStoreConfig.Type.
const (
	// ContentStoreSOCI is the snapshotter's own content store.
	ContentStoreSOCI ContentStoreType = "soci"
	// ContentStoreContainerd is containerd's content store, reached over
	// ContentStoreConfig.ContainerdAddress.
	ContentStoreContainerd ContentStoreType = "containerd"
)

// Config is the whole configuration file. Field order follows the reference
// sample so that Encode writes keys in a familiar order. A field tagged
// schema:"ours" (and everything below it) is not in upstream's schema;
// Keys reports it so.
type Config struct {
	// HTTPCacheType is accepted for compatibility with upstream files,
	// which do not use it; it takes the same values as FSCacheType.
	HTTPCacheType string `toml:"http_cache_type"`
	// FSCacheType selects the cache of fetched span data: "" for files
	// under the root directory, CacheTypeMemory to keep it in memory.
	FSCacheType string `toml:"filesystem_cache_type"`
	// ResolveResultEntry bounds the cache of resolved layers; 0 lets the
	// layer resolver pick its built-in size (30).
	ResolveResultEntry int `toml:"resolve_result_entry"`
	// Debug turns on go-fuse debug logging, which includes file names.
	Debug bool `toml:"debug"`
	// DisableVerification skips checking fetched spans against the zTOC.
	DisableVerification bool `toml:"disable_verification"`
	// MaxConcurrency limits the registry requests in flight on the node
	// (span reads, read-ahead, background fetch, index and zTOC fetches);
	// after normalization 0 means unlimited (written as a negative number
	// in the file).
	MaxConcurrency int64 `toml:"max_concurrency"`
	// MountTimeoutSec bounds how long a mount waits to resolve a layer.
	MountTimeoutSec Seconds `toml:"mount_timeout_sec"`
	// FuseMetricsEmitWaitDurationSec is the delay before per-image FUSE
	// operation counts are emitted.
	FuseMetricsEmitWaitDurationSec Seconds `toml:"fuse_metrics_emit_wait_duration_sec"`
	// MetricsAddress is where Prometheus metrics are served; "" disables it.
	MetricsAddress string `toml:"metrics_address"`
	// MetricsNetwork is NetworkTCP or NetworkUnix.
	MetricsNetwork string `toml:"metrics_network"`
	// NoPrometheus disables metric emission.
	NoPrometheus bool `toml:"no_prometheus"`
	// DebugAddress is a unix socket path, or a loopback host:port, serving
	// /debug/ (pprof); "" disables it.
	DebugAddress string `toml:"debug_address"`
	// MetadataStore is MetadataStoreDB or MetadataStoreDBMulti.
	MetadataStore string `toml:"metadata_store"`
	// MetadataDBNoSync skips fsync on metadata database commits.
	MetadataDBNoSync bool `toml:"metadata_db_no_sync"`
	// MetadataInsertionChunkSize is the number of node insertions per
	// metadata transaction; 0 lets the metadata store choose (5000).
	MetadataInsertionChunkSize int `toml:"metadata_insertion_chunk_size"`
	// SkipCheckSnapshotterSupported skips the start-up overlayfs check.
	SkipCheckSnapshotterSupported bool `toml:"skip_check_snapshotter_supported"`

	HTTP               HTTPConfig               `toml:"http"`
	Blob               BlobConfig               `toml:"blob"`
	DirectoryCache     DirectoryCacheConfig     `toml:"directory_cache"`
	Fuse               FuseConfig               `toml:"fuse"`
	BackgroundFetch    BackgroundFetchConfig    `toml:"background_fetch"`
	ContentStore       ContentStoreConfig       `toml:"content_store"`
	Prefetch           PrefetchConfig           `toml:"prefetch"`
	PullModes          PullModesConfig          `toml:"pull_modes"`
	KubeconfigKeychain KubeconfigKeychainConfig `toml:"kubeconfig_keychain"`
	CRIKeychain        CRIKeychainConfig        `toml:"cri_keychain"`
	Resolver           ResolverConfig           `toml:"resolver"`
	Snapshotter        SnapshotterConfig        `toml:"snapshotter"`
	// Limits bounds what remote data (SOCI indices, zTOCs, span data) may
	// make the daemon allocate or walk. Not in upstream's schema.
	Limits LimitsConfig `toml:"limits" schema:"ours"`
}

// HTTPConfig is the [http] table: timeouts and retries of the registry
// client. Its keys are CamelCase in the file, as upstream spells them.
type HTTPConfig struct {
	// DialTimeoutMsec bounds establishing a connection.
	DialTimeoutMsec Milliseconds `toml:"DialTimeoutMsec"`
	// ResponseHeaderTimeoutMsec bounds the wait for response headers after
	// the request is sent.
	ResponseHeaderTimeoutMsec Milliseconds `toml:"ResponseHeaderTimeoutMsec"`
	// RequestTimeoutMsec bounds one whole attempt, body included.
	RequestTimeoutMsec Milliseconds `toml:"RequestTimeoutMsec"`
	// MaxRetries is the number of retries after the first attempt; a
	// negative value disables retries.
	MaxRetries int `toml:"MaxRetries"`
	// MinWaitMsec and MaxWaitMsec bound the backoff between attempts.
	MinWaitMsec Milliseconds `toml:"MinWaitMsec"`
	MaxWaitMsec Milliseconds `toml:"MaxWaitMsec"`
}

// BlobConfig is the [blob] table: how layer blobs are fetched and re-checked.
type BlobConfig struct {
	// ValidIntervalSec is how long a blob's reachability check stays valid;
	// 0 (forced by CheckAlways) checks on every access.
	ValidIntervalSec Seconds `toml:"valid_interval"`
	// FetchTimeoutSec bounds one fetch of blob data.
	FetchTimeoutSec Seconds `toml:"fetching_timeout_sec"`
	// MaxRetries, MinWaitMsec and MaxWaitMsec override the [http] values
	// for blob fetches; 0 in the file takes the [http] value.
	MaxRetries  int          `toml:"max_retries"`
	MinWaitMsec Milliseconds `toml:"min_wait_msec"`
	MaxWaitMsec Milliseconds `toml:"max_wait_msec"`
	// CheckAlways re-checks the blob on every access.
	CheckAlways bool `toml:"check_always"`
	// ForceSingleRangeMode never asks the registry for several ranges at
	// once. Accepted, and true whatever its value: the daemon's requests
	// always ask for a single range.
	ForceSingleRangeMode bool `toml:"force_single_range_mode"`
	// MaxSpanVerificationRetries is how many more times a span is fetched
	// when its content fails verification.
	MaxSpanVerificationRetries int `toml:"max_span_verification_retries"`
}

// DirectoryCacheConfig is the [directory_cache] table.
type DirectoryCacheConfig struct {
	// MaxLRUCacheEntry bounds the in-memory buffer cache; 0 lets the cache
	// pick its built-in size (10).
	MaxLRUCacheEntry int `toml:"max_lru_cache_entry"`
	// MaxCacheFds bounds the span cache files kept open for reads; 0 lets
	// the cache pick (128 here, 10 upstream).
	MaxCacheFds int `toml:"max_cache_fds"`
	// SyncAdd writes to the cache synchronously.
	SyncAdd bool `toml:"sync_add"`
	// Direct reads and writes cache files without the in-memory buffer.
	Direct bool `toml:"direct"`
	// MaxBytes bounds the span cache on disk ("10gb"); least recently used
	// layers are evicted first. Unbounded ('') by default. Not in upstream's
	// schema.
	MaxBytes ByteSize `toml:"max_bytes" schema:"ours"`
}

// FuseConfig is the [fuse] table: kernel cache timeouts of the FUSE mounts.
type FuseConfig struct {
	// AttrTimeoutSec is how long the kernel caches file attributes.
	AttrTimeoutSec Seconds `toml:"attr_timeout"`
	// EntryTimeoutSec is how long the kernel caches name lookups.
	EntryTimeoutSec Seconds `toml:"entry_timeout"`
	// NegativeTimeoutSec is how long the kernel caches failed lookups.
	NegativeTimeoutSec Seconds `toml:"negative_timeout"`
	// LogFuseOperations logs every FUSE operation (debug only: it can
	// reveal file names).
	LogFuseOperations bool `toml:"log_fuse_operations"`
	// Passthrough serves files whose bytes are all local through FUSE
	// passthrough (Linux 6.9+, root): the kernel reads a copy of the file
	// with no READ request. Every open then costs an OPEN and a RELEASE
	// request (no FUSE no_open). Not in upstream's schema.
	Passthrough bool `toml:"passthrough" schema:"ours"`
	// PassthroughMaxBytes bounds the copies on disk (default 1 GiB). Not in
	// upstream's schema.
	PassthroughMaxBytes ByteSize `toml:"passthrough_max_bytes" schema:"ours"`
}

// BackgroundFetchConfig is the [background_fetch] table: the fetcher that
// downloads the rest of each lazily mounted layer.
type BackgroundFetchConfig struct {
	// Disable turns the background fetcher off.
	Disable bool `toml:"disable"`
	// SilencePeriodMsec pauses fetching after a new image is mounted.
	SilencePeriodMsec Milliseconds `toml:"silence_period_msec"`
	// FetchPeriodMsec is the interval between two span fetches.
	FetchPeriodMsec Milliseconds `toml:"fetch_period_msec"`
	// MaxQueueSize bounds the work queue; a negative value means unbounded.
	MaxQueueSize int `toml:"max_queue_size"`
	// DropPolicy is DropOldest or DropNewest: which entry goes when the
	// queue is full.
	DropPolicy string `toml:"drop_policy"`
	// EmitMetricPeriodSec is the interval between metric emissions.
	EmitMetricPeriodSec Seconds `toml:"emit_metric_period_sec"`
}

// ContentStoreConfig is the [content_store] table.
type ContentStoreConfig struct {
	// Type is ContentStoreSOCI or ContentStoreContainerd.
	Type ContentStoreType `toml:"type"`
	// ContainerdAddress is containerd's socket path (a "unix://" prefix is
	// removed); used only by the containerd content store.
	ContainerdAddress string `toml:"containerd_address"`
	// Namespace is the containerd namespace the content store works in.
	Namespace string `toml:"namespace"`
}

// PrefetchConfig is the [prefetch] table: the spans a layer's SOCI v2
// prefetch artifact lists are loaded right after the layer is mounted.
type PrefetchConfig struct {
	// Enable turns prefetching on.
	Enable bool `toml:"enable"`
	// MaxConcurrency limits the prefetch range requests in flight on the
	// node, all layers together; 0 is unlimited (the registry request
	// slots still apply).
	MaxConcurrency int64 `toml:"max_concurrency"`
	// Record records, per image, the spans containers read from its
	// first mount until it is ready (RecordSeconds elapsed, or
	// RecordUntilFile opened) into <root>/fs/traces, for
	// `soci prefetch from-trace`.
	Record bool `toml:"record" schema:"ours"`
	// RecordSeconds is how long an image is recorded from its first
	// mount.
	RecordSeconds Seconds `toml:"record_seconds" schema:"ours"`
	// RecordUntilFile, when set, is a path in the image whose open ends
	// its recording before RecordSeconds.
	RecordUntilFile string `toml:"record_until_file" schema:"ours"`
}

// PullModesConfig is the [pull_modes] table: which ways of pulling an image
// are on.
type PullModesConfig struct {
	// SOCIv1 finds SOCI indexes through the OCI referrers API.
	SOCIv1 SOCIv1Config `toml:"soci_v1"`
	// SOCIv2 finds SOCI indexes through image manifest annotations.
	SOCIv2 SOCIv2Config `toml:"soci_v2"`
	// Parallel pulls and unpacks whole layers concurrently, without lazy
	// loading.
	Parallel ParallelPullConfig `toml:"parallel_pull_unpack"`
}

// SOCIv1Config is the [pull_modes.soci_v1] table.
type SOCIv1Config struct {
	Enable bool `toml:"enable"`
}

// SOCIv2Config is the [pull_modes.soci_v2] table.
type SOCIv2Config struct {
	Enable bool `toml:"enable"`
}

// ParallelPullConfig is the [pull_modes.parallel_pull_unpack] table. For the
// four limits, zero or a negative value means unlimited.
type ParallelPullConfig struct {
	// Enable makes parallel pull the primary pull mode.
	Enable bool `toml:"enable"`
	// ExperimentalParallelPullAsFallback uses parallel pull for images
	// without a SOCI index when lazy loading is the primary mode.
	ExperimentalParallelPullAsFallback bool `toml:"experimental_parallel_pull_as_fallback"`
	// MaxConcurrentDownloads limits downloads across all images.
	MaxConcurrentDownloads int64 `toml:"max_concurrent_downloads"`
	// MaxConcurrentDownloadsPerImage limits downloads of one image.
	MaxConcurrentDownloadsPerImage int64 `toml:"max_concurrent_downloads_per_image"`
	// ConcurrentDownloadChunkSize is the size of one ranged request;
	// Unbounded fetches each layer in a single request.
	ConcurrentDownloadChunkSize ByteSize `toml:"concurrent_download_chunk_size"`
	// MaxConcurrentUnpacks limits unpacks across all images.
	MaxConcurrentUnpacks int64 `toml:"max_concurrent_unpacks"`
	// MaxConcurrentUnpacksPerImage limits unpacks of one image.
	MaxConcurrentUnpacksPerImage int64 `toml:"max_concurrent_unpacks_per_image"`
	// DiscardUnpackedLayers deletes layer blobs once unpacked.
	DiscardUnpackedLayers bool `toml:"discard_unpacked_layers"`
	// DecompressStreams replaces the built-in decompressor for a
	// compression ("gzip", "zstd") with an external program.
	DecompressStreams map[string]DecompressStream `toml:"decompress_streams"`
}

// DecompressStream is an external decompression program, run without a
// shell; it reads the compressed stream on stdin and writes to stdout.
type DecompressStream struct {
	// Path is the program's absolute path.
	Path string `toml:"path"`
	// Args are passed to the program as they are.
	Args []string `toml:"args"`
}

// KubeconfigKeychainConfig is the [kubeconfig_keychain] table: registry
// credentials synced from the image pull secrets of a Kubernetes cluster
// (fs/remote/kubekeychain).
type KubeconfigKeychainConfig struct {
	// EnableKeychain turns the keychain on.
	EnableKeychain bool `toml:"enable_keychain"`
	// KubeconfigPath is the kubeconfig to reach the API server with; ""
	// takes $KUBECONFIG, else ~/.kube/config, else the pod's service
	// account. A path that does not exist yet is waited for.
	KubeconfigPath string `toml:"kubeconfig_path"`
}

// CRIKeychainConfig is the [cri_keychain] table: registry credentials
// captured from CRI image pulls proxied through the daemon.
type CRIKeychainConfig struct {
	EnableKeychain bool `toml:"enable_keychain"`
	// ImageServicePath is the socket of the backing CRI image service.
	ImageServicePath string `toml:"image_service_path"`
}

// ResolverConfig is the [resolver] table: registry hosts and auth caching.
type ResolverConfig struct {
	// AuthClientTTLSec is how long a cached registry auth client is reused;
	// a negative value never expires it.
	AuthClientTTLSec Seconds `toml:"auth_client_ttl_sec"`
	// EnableAuthClientSharing shares one auth client between images of the
	// same registry pulled with the same credentials.
	EnableAuthClientSharing bool `toml:"enable_auth_client_sharing"`
	// ConfigPath lists containerd-style hosts directories (each holding
	// <registry>/hosts.toml), separated by ':', searched in order; the first
	// one with a directory for a registry is used for it. Empty: none. Not
	// in upstream's schema.
	ConfigPath string `toml:"config_path" schema:"ours"`
	// Host maps a registry host name (e.g. "docker.io") to its settings.
	Host map[string]HostConfig `toml:"host"`
}

// HostsDirs returns the directories of ConfigPath, in order.
func (r *ResolverConfig) HostsDirs() []string {
	if r.ConfigPath == "" {
		return nil
	}
	return strings.Split(r.ConfigPath, ":")
}

// HostConfig is a [resolver.host."<registry>"] table.
type HostConfig struct {
	// Mirrors are tried, in order, before the registry itself.
	Mirrors []MirrorConfig `toml:"mirrors"`
}

// MirrorConfig is one [[resolver.host."<registry>".mirrors]] entry.
type MirrorConfig struct {
	// Host is the mirror's address.
	Host string `toml:"host"`
	// Insecure talks to the mirror over plain http.
	Insecure bool `toml:"insecure"`
	// RequestTimeoutSec bounds each request to the mirror; 0 keeps the
	// [http] timeout and a negative value means no timeout.
	RequestTimeoutSec Seconds `toml:"request_timeout_sec"`
}

// SnapshotterConfig is the [snapshotter] table.
type SnapshotterConfig struct {
	// MinLayerSize is the size in bytes below which a layer is pulled
	// whole instead of lazily.
	MinLayerSize int64 `toml:"min_layer_size"`
	// AllowInvalidMountsOnRestart lets the daemon start even when existing
	// snapshots can no longer reach their data source.
	AllowInvalidMountsOnRestart bool `toml:"allow_invalid_mounts_on_restart"`
}

// LimitsConfig is the [limits] table: bounds on what data from a registry
// may make the daemon allocate, walk or keep. Data past a bound is refused
// as a whole (the image is pulled normally, or a read gets EIO). 0 in the
// file takes the default. Not in upstream's schema.
type LimitsConfig struct {
	// MaxIndexEntries bounds the entries (layers) of one SOCI index.
	MaxIndexEntries int `toml:"max_index_entries"`
	// MaxZTOCBytes bounds the size of one serialized zTOC.
	MaxZTOCBytes ByteSize `toml:"max_ztoc_bytes"`
	// MaxZTOCEntries bounds the file entries of one zTOC.
	MaxZTOCEntries int `toml:"max_ztoc_entries"`
	// MaxZTOCHeapBytes bounds the memory one zTOC may take to decode and
	// hold (its file table, names, xattrs and checkpoints), as estimated
	// before decoding; it is also the node-wide budget of zTOC loads in
	// progress.
	MaxZTOCHeapBytes ByteSize `toml:"max_ztoc_heap_bytes"`
	// MaxTreeDepth bounds the directory depth of one layer's tree.
	MaxTreeDepth int `toml:"max_tree_depth"`
	// MaxDecompressBytes bounds the bytes being decompressed at once on
	// the node, across all layers; a span that alone exceeds it is refused.
	MaxDecompressBytes ByteSize `toml:"max_decompress_bytes"`
	// HostMemoryLimit is the FUSE host's soft limit on its Go runtime's
	// memory (debug.SetMemoryLimit): past it the garbage collector runs
	// more often. GOMEMLIMIT in the environment overrides it.
	HostMemoryLimit ByteSize `toml:"host_memory_limit"`
	// NeighbourFetchBytes is how many compressed bytes on either side of
	// a span miss are fetched once a layer's reads have missed at
	// scattered places (a program loading its modules one after
	// another); 0 turns it off.
	NeighbourFetchBytes ByteSize `toml:"neighbour_fetch_bytes"`
	// BackgroundMaxDelayMsec caps [background_fetch] silence_period_msec:
	// how long a mounted layer waits before the background walk starts
	// on it. The walk yields to mounts and reads by stopping its chunks
	// in flight, so by default (0) it starts at once and uses the link
	// while the container is being created. A configuration that sets
	// silence_period_msec and not this key gets its silence period.
	BackgroundMaxDelayMsec Milliseconds `toml:"background_max_delay_msec"`
	// BackgroundFastLinkMbit: a link to the registry measured faster than
	// this many Mbit/s (from the transfers of 1 MiB or more, fs/linkrate)
	// is fast. There the walk's own CPU (inflating and hashing what it
	// fetches), not the link, limits it, so it does not start at the
	// mount: it waits until mounts and reads have been over for a second,
	// and does not compete with the container's start. 0: never (the walk
	// always starts at the mount).
	BackgroundFastLinkMbit int64 `toml:"background_fast_link_mbit"`
}
