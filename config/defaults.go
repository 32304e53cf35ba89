package config

// Defaults that differ from Go's zero values. A setting written as 0 in the
// file is replaced by its default during normalization.
const (
	defaultMaxConcurrency            = 100
	defaultMountTimeoutSec           = 30
	defaultFuseMetricsEmitWaitSec    = 60
	defaultDialTimeoutMsec           = 3_000
	defaultResponseHeaderTimeoutMsec = 3_000
	defaultRequestTimeoutMsec        = 300_000
	defaultMaxRetries                = 8
	defaultMinWaitMsec               = 30
	defaultMaxWaitMsec               = 300_000
	defaultValidIntervalSec          = 60
	defaultFetchTimeoutSec           = 300
	defaultPassthroughMaxBytes       = 1 << 30
	defaultFuseTimeoutSec            = 86400 // layers are immutable: cache for a day (the reference: 1)
	defaultSilencePeriodMsec         = 30_000
	defaultFetchPeriodMsec           = 500
	defaultMaxQueueSize              = 300
	defaultEmitMetricPeriodSec       = 10
	defaultAuthClientTTLSec          = 3600
	defaultDownloadsPerImage         = 3
	defaultUnpacksPerImage           = 1
	defaultMaxIndexEntries           = 4096
	defaultMaxZTOCBytes              = 256 << 20
	defaultMaxZTOCEntries            = 1 << 20
	defaultMaxZTOCHeapBytes          = 384 << 20
	defaultMaxTreeDepth              = 1024
	defaultMaxDecompressBytes        = 64 << 20
	defaultHostMemoryLimit           = 64 << 20
	defaultNeighbourFetchBytes       = 8 << 20
	// A link faster than 300 Mbit/s (37.5 MB/s) feeds the walk more
	// than half a core's work (it inflates and hashes ~16 CPU s per GB,
	// BenchmarkBackgroundCompletion). Response bodies on loopback on a
	// loaded 2-core machine measured 53-127 MB/s; on the bench's shared
	// 200 Mbit/s link at most 25 MB/s.
	defaultBackgroundFastLinkMbit = 300
	defaultRecordSeconds          = 30
)

// Default returns the configuration used when no file is present. It is
// already normalized and valid.
func Default() *Config {
	return &Config{
		MaxConcurrency:                 defaultMaxConcurrency,
		MountTimeoutSec:                defaultMountTimeoutSec,
		FuseMetricsEmitWaitDurationSec: defaultFuseMetricsEmitWaitSec,
		MetricsNetwork:                 NetworkTCP,
		MetadataStore:                  MetadataStoreDB,
		HTTP: HTTPConfig{
			DialTimeoutMsec:           defaultDialTimeoutMsec,
			ResponseHeaderTimeoutMsec: defaultResponseHeaderTimeoutMsec,
			RequestTimeoutMsec:        defaultRequestTimeoutMsec,
			MaxRetries:                defaultMaxRetries,
			MinWaitMsec:               defaultMinWaitMsec,
			MaxWaitMsec:               defaultMaxWaitMsec,
		},
		Blob: BlobConfig{
			ValidIntervalSec: defaultValidIntervalSec,
			FetchTimeoutSec:  defaultFetchTimeoutSec,
			MaxRetries:       defaultMaxRetries,
			MinWaitMsec:      defaultMinWaitMsec,
			MaxWaitMsec:      defaultMaxWaitMsec,
		},
		DirectoryCache: DirectoryCacheConfig{Direct: true, MaxBytes: Unbounded},
		Fuse: FuseConfig{
			AttrTimeoutSec:      defaultFuseTimeoutSec,
			EntryTimeoutSec:     defaultFuseTimeoutSec,
			NegativeTimeoutSec:  defaultFuseTimeoutSec,
			PassthroughMaxBytes: defaultPassthroughMaxBytes,
		},
		BackgroundFetch: BackgroundFetchConfig{
			SilencePeriodMsec:   defaultSilencePeriodMsec,
			FetchPeriodMsec:     defaultFetchPeriodMsec,
			MaxQueueSize:        defaultMaxQueueSize,
			DropPolicy:          DropNewest,
			EmitMetricPeriodSec: defaultEmitMetricPeriodSec,
		},
		ContentStore: ContentStoreConfig{
			Type:              ContentStoreSOCI,
			ContainerdAddress: DefaultContainerdAddress,
			Namespace:         DefaultContentStoreNamespace,
		},
		Prefetch: PrefetchConfig{RecordSeconds: defaultRecordSeconds},
		PullModes: PullModesConfig{
			SOCIv2: SOCIv2Config{Enable: true},
			Parallel: ParallelPullConfig{
				MaxConcurrentDownloads:         Unbounded,
				MaxConcurrentDownloadsPerImage: defaultDownloadsPerImage,
				ConcurrentDownloadChunkSize:    Unbounded,
				MaxConcurrentUnpacks:           Unbounded,
				MaxConcurrentUnpacksPerImage:   defaultUnpacksPerImage,
			},
		},
		CRIKeychain: CRIKeychainConfig{ImageServicePath: DefaultContainerdAddress},
		Resolver:    ResolverConfig{AuthClientTTLSec: defaultAuthClientTTLSec, ConfigPath: DefaultHostsDir},
		Limits: LimitsConfig{
			MaxIndexEntries:    defaultMaxIndexEntries,
			MaxZTOCBytes:       defaultMaxZTOCBytes,
			MaxZTOCEntries:     defaultMaxZTOCEntries,
			MaxZTOCHeapBytes:   defaultMaxZTOCHeapBytes,
			MaxTreeDepth:       defaultMaxTreeDepth,
			MaxDecompressBytes: defaultMaxDecompressBytes,
			HostMemoryLimit:    defaultHostMemoryLimit,
			// Not in normalize: 0 turns it off.
			NeighbourFetchBytes: defaultNeighbourFetchBytes,
			// 0 turns it off.
			BackgroundFastLinkMbit: defaultBackgroundFastLinkMbit,
		},
	}
}

// negativeSpanVerificationRetries is what a negative [blob]
// max_span_verification_retries means (upstream's built-in count).
const negativeSpanVerificationRetries = 3
