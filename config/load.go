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

// Load reads and parses the configuration file at path. When the file does
// not exist and explicit is false (the daemon is looking at its default
// path), Load returns Default(); every other failure to read the file is an
// error naming path.
func Load(path string, explicit bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return Default(), nil
		}
		return nil, fmt.Errorf("read config file %s: %w", path, err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes a TOML document on top of Default(), rejecting unknown keys
// and values of the wrong type, then replaces values that mean "use the
// default" and validates the result. Errors name the dotted key and, when
// it can be found, the line.
func Parse(data []byte) (*Config, error) {
	cfg := Default()
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, describeDecodeError(err)
	}
	cfg.normalize()
	if err := cfg.Validate(); err != nil {
		return nil, withLines(err, keyLines(data))
	}
	return cfg, nil
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
}

func (h *HTTPConfig) normalize() {
	defaultIfZero(&h.DialTimeoutMsec, defaultDialTimeoutMsec)
	defaultIfZero(&h.ResponseHeaderTimeoutMsec, defaultResponseHeaderTimeoutMsec)
	defaultIfZero(&h.RequestTimeoutMsec, defaultRequestTimeoutMsec)
	defaultIfZero(&h.MaxRetries, defaultMaxRetries)
	defaultIfZero(&h.MinWaitMsec, defaultMinWaitMsec)
	defaultIfZero(&h.MaxWaitMsec, defaultMaxWaitMsec)
}

// normalize fills the blob retry settings written as 0 from the (already
// normalized) [http] table. As upstream does, only an explicit 0 inherits:
// an absent key keeps the built-in default.
func (b *BlobConfig) normalize(h HTTPConfig) {
	defaultIfZero(&b.ValidIntervalSec, defaultValidIntervalSec)
	if b.CheckAlways {
		b.ValidIntervalSec = 0
	}
	defaultIfZero(&b.FetchTimeoutSec, defaultFetchTimeoutSec)
	defaultIfZero(&b.MaxRetries, h.MaxRetries)
	defaultIfZero(&b.MinWaitMsec, h.MinWaitMsec)
	defaultIfZero(&b.MaxWaitMsec, h.MaxWaitMsec)
}

func (f *FuseConfig) normalize() {
	defaultIfZero(&f.AttrTimeoutSec, defaultFuseTimeoutSec)
	defaultIfZero(&f.EntryTimeoutSec, defaultFuseTimeoutSec)
	defaultIfZero(&f.NegativeTimeoutSec, defaultFuseTimeoutSec)
}

func (b *BackgroundFetchConfig) normalize() {
	defaultIfZero(&b.SilencePeriodMsec, defaultSilencePeriodMsec)
	defaultIfZero(&b.FetchPeriodMsec, defaultFetchPeriodMsec)
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

// defaultIfZero sets *v to def when *v is the zero value.
func defaultIfZero[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
