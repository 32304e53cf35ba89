package service

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs/chunkfetch"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/index/ctdcontent"
	"github.com/fastsoci/soci-snapshotter/fs/layerapply"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/fs/span"
	parallelpull "github.com/fastsoci/soci-snapshotter/pull"
	"github.com/fastsoci/soci-snapshotter/snapshot"
)

// pullRegistry adapts remote.Client to pull.Registry.
type pullRegistry struct{ c *remote.Client }

func (r pullRegistry) FetchManifest(ctx context.Context, ref string, dgst digest.Digest) ([]byte, string, error) {
	return r.c.FetchManifest(ctx, ref, dgst)
}

func (r pullRegistry) Blob(ref string, desc ocispec.Descriptor) chunkfetch.RangeReader {
	return r.c.Blob(ref, desc)
}

// pullMetrics counts the layers parallel pull finished, in the daemon's
// own registry.
type pullMetrics struct {
	layers  *prometheus.CounterVec
	bytes   prometheus.Counter
	inflate *prometheus.CounterVec
}

func newPullMetrics() *pullMetrics {
	return &pullMetrics{
		layers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "soci_parallel_pull_layers_total",
			Help: "Layers downloaded and unpacked by parallel pull, by result (ok: digest and diffID checked; failed).",
		}, []string{"result"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "soci_parallel_pull_bytes_total",
			Help: "Compressed bytes of the layers parallel pull unpacked and checked.",
		}),
		inflate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "soci_parallel_pull_multicore_inflate_total",
			Help: "Layers parallel pull inflated on several cores from their zTOC's checkpoints, by result (ok; redone: the output was not the layer's, unpacked again in one stream).",
		}, []string{"result"}),
	}
}

func (m *pullMetrics) observeInflate(ok bool) {
	m.inflate.WithLabelValues(map[bool]string{true: "ok", false: "redone"}[ok]).Inc()
}

func (m *pullMetrics) observe(ok bool, n int64, _ time.Duration) {
	if !ok {
		m.layers.WithLabelValues("failed").Inc()
		return
	}
	m.layers.WithLabelValues("ok").Inc()
	m.bytes.Add(float64(n))
}

func (m *pullMetrics) collectors() []prometheus.Collector {
	if m == nil {
		return nil
	}
	return []prometheus.Collector{m.layers, m.bytes, m.inflate}
}

// newPuller builds parallel pull and unpack ([pull_modes.parallel_pull_unpack])
// in the daemon, nil when neither enable nor
// experimental_parallel_pull_as_fallback is on. It runs in the daemon, not
// in the FUSE host: the host is the one process whose end takes running
// containers' lazily loaded filesystems with it, and a whole-layer unpack
// (CPU, disk, hostile tar data) has no business there; the bytes go
// straight from the registry to the snapshot's directory, with no socket
// in between. Registry access is the same library and the same
// configuration as the host's (hosts.toml, mirrors, timeouts, retries),
// with credentials from the CRI proxy, the cluster's pull secrets and the
// docker config, tried in that order.
func newPuller(ctx context.Context, cfg *config.Config, root string, criCreds func(string) (string, string, error), m *pullMetrics) (*puller, error) {
	p := cfg.PullModes.Parallel
	if !p.Enable && !p.ExperimentalParallelPullAsFallback {
		return nil, nil
	}
	ropts := registryOptions(cfg)
	creds := ropts.Credentials
	if kube := kubeCredentials(ctx, cfg); kube != nil {
		creds = remote.ChainCredentials(kube, creds)
	}
	if criCreds != nil {
		creds = remote.ChainCredentials(criCreds, creds)
	}
	ropts.Credentials = creds
	reg := remote.New(ropts)
	opts := parallelpull.Options{
		Registry:             pullRegistry{reg},
		StagingDir:           snapshot.PullStagingDir(filepath.Join(root, "snapshotter")),
		ChunkSize:            int64(p.ConcurrentDownloadChunkSize),
		MaxDownloads:         p.MaxConcurrentDownloads,
		MaxDownloadsPerImage: p.MaxConcurrentDownloadsPerImage,
		MaxUnpacks:           p.MaxConcurrentUnpacks,
		MaxUnpacksPerImage:   p.MaxConcurrentUnpacksPerImage,
		// The reference starts every later layer of the image at the
		// first one's Prepare.
		ReadAhead: true,
	}
	if m != nil {
		opts.Observe, opts.ObserveInflate = m.observe, m.observeInflate
	}
	var store *ctdcontent.Store
	if !p.DiscardUnpackedLayers {
		// As the reference: the blobs are kept in containerd's content
		// store, so that the image is complete there (export, push).
		cs, err := ctdcontent.New(cfg.ContentStore.ContainerdAddress)
		if err != nil {
			return nil, err
		}
		store, opts.Store = cs, cs
	}
	if len(p.DecompressStreams) > 0 {
		opts.Apply.Programs = map[string]layerapply.Program{}
		for name, s := range p.DecompressStreams {
			prog := layerapply.Program{Path: s.Path, Args: s.Args}
			if err := layerapply.CheckProgram(prog); err != nil {
				return nil, fmt.Errorf("pull_modes.parallel_pull_unpack.decompress_streams.%s: %w", name, err)
			}
			if name != "gzip" && name != "zstd" {
				log.G(ctx).WithField("algorithm", name).Warn("decompress_streams: only gzip and zstd can be replaced; ignored")
				continue
			}
			opts.Apply.Programs[name] = prog
		}
	}
	var spans *index.Store
	if _, own := opts.Apply.Programs["gzip"]; p.Enable && !own && (cfg.PullModes.SOCIv1.Enable || cfg.PullModes.SOCIv2.Enable) {
		// Layers with a zTOC are inflated on every core (unless gzip
		// has a decompressor of the user's). The daemon's own index
		// store shares the FUSE host's directory (writes are staged per
		// process) and the puller's registry client.
		var err error
		spans, err = index.New(index.Options{
			Root: filepath.Join(root, "fs", "index"), Registry: reg,
			V1: cfg.PullModes.SOCIv1.Enable, V2: cfg.PullModes.SOCIv2.Enable, Limits: indexLimits(cfg),
		})
		if err != nil {
			if store != nil {
				store.Close()
			}
			return nil, fmt.Errorf("parallel pull: %w", err)
		}
		opts.Spans, opts.InflateWorkers = pullSpans{spans}, runtime.GOMAXPROCS(0)
	}
	pp, err := parallelpull.New(opts)
	if err != nil {
		if store != nil {
			store.Close()
		}
		if spans != nil {
			spans.Close()
		}
		return nil, err
	}
	log.G(ctx).WithFields(log.Fields{"primary": p.Enable, "chunk_size": p.ConcurrentDownloadChunkSize,
		"keep_blobs": !p.DiscardUnpackedLayers, "multi_core_inflate": spans != nil}).Info("parallel pull and unpack on")
	return &puller{Puller: pp, store: store, spans: spans}, nil
}

// puller is parallel pull with the content store connection and the index
// store it may hold.
type puller struct {
	*parallelpull.Puller
	store *ctdcontent.Store
	spans *index.Store
}

func (p *puller) Close() error {
	err := p.Puller.Close()
	if p.store != nil {
		err = errors.Join(err, p.store.Close())
	}
	if p.spans != nil {
		err = errors.Join(err, p.spans.Close())
	}
	return err
}

// pullSpans opens the zTOCs of layers of indexed images for parallel
// pull's multi-core inflate.
type pullSpans struct{ s *index.Store }

func (p pullSpans) Open(ctx context.Context, ref string, manifest digest.Digest, layer ocispec.Descriptor) (parallelpull.SpanLayer, error) {
	idx, err := p.s.Find(ctx, ref, manifest, "")
	if err != nil {
		return nil, err
	}
	l, err := p.s.Open(ctx, ref, idx, layer.Digest)
	if err != nil {
		return nil, err
	}
	return spanLayer{l}, nil
}

// spanLayer is an index.Layer as parallel pull sees it.
type spanLayer struct{ *index.Layer }

func (l spanLayer) Table() span.Table { return l.Spans }
