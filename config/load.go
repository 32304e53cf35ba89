package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Load reads and parses the configuration file at path, as Read does,
// dropping the notices.
func Load(path string, explicit bool) (*Config, error) {
	cfg, _, err := LoadFile(path, explicit)
	return cfg, err
}

// LoadFile reads and parses the configuration file at path, as Read does.
// When the file does not exist and path is DefaultConfigPath or explicit is
// false, LoadFile returns Default(): as upstream, a daemon started with the
// default path and no file runs with the defaults. Every other failure to
// read the file is an error naming path.
func LoadFile(path string, explicit bool) (*Config, []Notice, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if (!explicit || path == DefaultConfigPath) && errors.Is(err, fs.ErrNotExist) {
			return Default(), nil, nil
		}
		return nil, nil, fmt.Errorf("read config file %s: %w", path, err)
	}
	cfg, notices, err := Read(data)
	if err != nil {
		return nil, nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, notices, nil
}

// Parse decodes a TOML document as Read does, dropping the notices.
func Parse(data []byte) (*Config, error) {
	cfg, _, err := Read(data)
	return cfg, err
}

// Read decodes a TOML document on top of Default(), replaces values that
// mean "use the default" and validates the result. As upstream, unknown
// keys are ignored; each is returned as a Notice naming its line and the
// nearest known key, followed by a Notice for each key the document sets
// that the daemon accepts but does not act on (see UnusedKeys). Values of
// the wrong type and values upstream cannot use either are errors naming
// the dotted key and, when it can be found, the line.
func Read(data []byte) (*Config, []Notice, error) {
	cfg := Default()
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var notices []Notice
	if err := dec.Decode(cfg); err != nil {
		// go-toml reports unknown keys only once the whole document has
		// been decoded into cfg.
		var strict *toml.StrictMissingError
		if !errors.As(err, &strict) {
			return nil, nil, describeDecodeError(err)
		}
		notices = unknownKeyNotices(strict)
	}
	cfg.normalize()
	lines := keyLines(data)
	cfg.honourSilencePeriod(lines)
	if err := cfg.Validate(); err != nil {
		return nil, nil, withLines(err, lines)
	}
	return cfg, append(notices, unusedKeyNotices(cfg, lines)...), nil
}

// honourSilencePeriod: a document that sets [background_fetch]
// silence_period_msec and not [limits] background_max_delay_msec gets the
// delay it asked for (the cap, 0 by default, would otherwise start the
// walk at the mount).
func (c *Config) honourSilencePeriod(lines map[string]int) {
	_, silence := lines["background_fetch.silence_period_msec"]
	_, capped := lines["limits.background_max_delay_msec"]
	if silence && !capped {
		c.Limits.BackgroundMaxDelayMsec = max(c.BackgroundFetch.SilencePeriodMsec, 0)
	}
}

// normalize replaces the values upstream treats as "use the default" and
// removes empty collections, so that a configuration means the same thing
// however it was written and survives Encode and Parse unchanged.
func (c *Config) normalize() {
	defaultIfZero(&c.MountTimeoutSec, defaultMountTimeoutSec)
	defaultIfZero(&c.FuseMetricsEmitWaitDurationSec, defaultFuseMetricsEmitWaitSec)
	defaultIfZero(&c.MaxConcurrency, defaultMaxConcurrency)
	if c.MaxConcurrency < 0 {
		c.MaxConcurrency = 0 // unlimited
	}
	defaultIfZero(&c.MetricsNetwork, NetworkTCP)
	defaultIfZero(&c.MetadataStore, MetadataStoreDB)
	// Upstream gives these no meaning below zero beyond "the built-in
	// size", which 0 means.
	zeroIfNegative(&c.ResolveResultEntry)
	zeroIfNegative(&c.MetadataInsertionChunkSize)
	zeroIfNegative(&c.DirectoryCache.MaxLRUCacheEntry)
	zeroIfNegative(&c.DirectoryCache.MaxCacheFds)
	// Upstream reads a negative min_layer_size as "unset".
	zeroIfNegative(&c.Snapshotter.MinLayerSize)
	if c.Prefetch.MaxConcurrency < 0 {
		c.Prefetch.MaxConcurrency = 0 // unlimited
	}
	c.HTTP.normalize()
	c.Blob.normalize(c.HTTP)
	defaultIfZero(&c.DirectoryCache.MaxBytes, Unbounded)
	c.Fuse.normalize()
	c.BackgroundFetch.normalize()
	c.ContentStore.normalize()
	c.PullModes.Parallel.normalize()
	defaultIfZero(&c.CRIKeychain.ImageServicePath, DefaultContainerdAddress)
	c.Resolver.normalize()
	c.Limits.normalize()
}

func (l *LimitsConfig) normalize() {
	defaultIfZero(&l.MaxIndexEntries, defaultMaxIndexEntries)
	defaultIfZero(&l.MaxZTOCBytes, defaultMaxZTOCBytes)
	defaultIfZero(&l.MaxZTOCEntries, defaultMaxZTOCEntries)
	defaultIfZero(&l.MaxZTOCHeapBytes, defaultMaxZTOCHeapBytes)
	defaultIfZero(&l.MaxTreeDepth, defaultMaxTreeDepth)
	defaultIfZero(&l.MaxDecompressBytes, defaultMaxDecompressBytes)
	defaultIfZero(&l.HostMemoryLimit, defaultHostMemoryLimit)
}

func (h *HTTPConfig) normalize() {
	defaultIfZero(&h.DialTimeoutMsec, defaultDialTimeoutMsec)
	defaultIfZero(&h.ResponseHeaderTimeoutMsec, defaultResponseHeaderTimeoutMsec)
	defaultIfZero(&h.RequestTimeoutMsec, defaultRequestTimeoutMsec)
	defaultIfZero(&h.MaxRetries, defaultMaxRetries)
	defaultIfZero(&h.MinWaitMsec, defaultMinWaitMsec)
	defaultIfZero(&h.MaxWaitMsec, defaultMaxWaitMsec)
	// Upstream hands a negative request timeout to net/http, where it
	// means no timeout.
	if h.RequestTimeoutMsec < 0 {
		h.RequestTimeoutMsec = maxMilliseconds
	}
	normalizeWaits(&h.MinWaitMsec, &h.MaxWaitMsec)
}

// normalizeWaits gives a retry backoff range upstream's meaning: a negative
// wait is no wait (the shortest one, 1 ms, here, since 0 means the
// default), and a shortest wait above the longest waits the longest every
// time.
func normalizeWaits(minWait, maxWait *Milliseconds) {
	*minWait = max(*minWait, 1)
	*maxWait = max(*maxWait, 1)
	*minWait = min(*minWait, *maxWait)
}

// normalize fills the blob retry settings written as 0 from the (already
// normalized) [http] table. As upstream does, only an explicit 0 inherits:
// an absent key keeps the built-in default.
func (b *BlobConfig) normalize(h HTTPConfig) {
	defaultIfZero(&b.ValidIntervalSec, defaultValidIntervalSec)
	// Upstream's check of a blob is due whenever its age exceeds
	// valid_interval: below zero, always.
	if b.ValidIntervalSec < 0 {
		b.CheckAlways = true
	}
	if b.CheckAlways {
		b.ValidIntervalSec = 0
	}
	defaultIfZero(&b.FetchTimeoutSec, defaultFetchTimeoutSec)
	defaultIfZero(&b.MaxRetries, h.MaxRetries)
	defaultIfZero(&b.MinWaitMsec, h.MinWaitMsec)
	defaultIfZero(&b.MaxWaitMsec, h.MaxWaitMsec)
	normalizeWaits(&b.MinWaitMsec, &b.MaxWaitMsec)
	// Upstream's span manager reads a negative count as its built-in 3.
	if b.MaxSpanVerificationRetries < 0 {
		b.MaxSpanVerificationRetries = negativeSpanVerificationRetries
	}
}

func (f *FuseConfig) normalize() {
	defaultIfZero(&f.AttrTimeoutSec, defaultFuseTimeoutSec)
	defaultIfZero(&f.EntryTimeoutSec, defaultFuseTimeoutSec)
	defaultIfZero(&f.NegativeTimeoutSec, defaultFuseTimeoutSec)
	defaultIfZero(&f.PassthroughMaxBytes, defaultPassthroughMaxBytes)
}

func (b *BackgroundFetchConfig) normalize() {
	defaultIfZero(&b.SilencePeriodMsec, defaultSilencePeriodMsec)
	defaultIfZero(&b.FetchPeriodMsec, defaultFetchPeriodMsec)
	// Upstream paces fetches with rate.Every(fetch_period), which below
	// zero is no pacing at all.
	b.FetchPeriodMsec = max(b.FetchPeriodMsec, 1)
	defaultIfZero(&b.MaxQueueSize, defaultMaxQueueSize)
	defaultIfZero(&b.DropPolicy, DropNewest)
	defaultIfZero(&b.EmitMetricPeriodSec, defaultEmitMetricPeriodSec)
}

func (s *ContentStoreConfig) normalize() {
	defaultIfZero(&s.Type, ContentStoreSOCI)
	s.ContainerdAddress = strings.TrimPrefix(s.ContainerdAddress, "unix://")
	defaultIfZero(&s.ContainerdAddress, DefaultContainerdAddress)
	defaultIfZero(&s.Namespace, DefaultContentStoreNamespace)
}

func (p *ParallelPullConfig) normalize() {
	defaultIfZero(&p.ConcurrentDownloadChunkSize, Unbounded)
	if len(p.DecompressStreams) == 0 {
		p.DecompressStreams = nil
	}
	for name, s := range p.DecompressStreams {
		if len(s.Args) == 0 {
			s.Args = nil
			p.DecompressStreams[name] = s
		}
	}
}

func (r *ResolverConfig) normalize() {
	defaultIfZero(&r.AuthClientTTLSec, defaultAuthClientTTLSec)
	if len(r.Host) == 0 {
		r.Host = nil
	}
	for name, h := range r.Host {
		if len(h.Mirrors) == 0 {
			h.Mirrors = nil
			r.Host[name] = h
		}
	}
}

// zeroIfNegative sets *v to 0 when it is negative.
func zeroIfNegative[T int | int64](v *T) {
	*v = max(*v, 0)
}

// defaultIfZero sets *v to def when *v is the zero value.
func defaultIfZero[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
