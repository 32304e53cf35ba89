package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"google.golang.org/grpc"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs"
	"github.com/fastsoci/soci-snapshotter/fs/index"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/metrics"
	"github.com/fastsoci/soci-snapshotter/snapshot"
)

// stopGrace bounds how long a graceful stop waits for in-flight calls.
const stopGrace = 30 * time.Second

// Service is a running daemon: the snapshotter behind a gRPC server.
type Service struct {
	lock        *rootLock
	fs          *fs.FS
	snapshotter *snapshot.Snapshotter
	server      *grpc.Server
	metrics     *metricsServer // nil when metrics_address is empty
	debug       *debugServer   // nil when debug_address is empty
	cri         *criProxy      // nil unless [cri_keychain] is enabled
}

// The lazy filesystem serves the snapshotter's remote layers and frees a
// layer's data when its snapshot is removed.
var (
	_ snapshot.Mounter  = (*fs.FS)(nil)
	_ snapshot.Releaser = (*fs.FS)(nil)
)

// New builds the daemon from cfg, keeping all state under root.
func New(ctx context.Context, cfg *config.Config, root string) (*Service, error) {
	lock, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	warnOverrides(ctx, cfg)
	m := newMetrics(ctx, cfg)
	var cri *criProxy
	var criCreds func(string) (string, string, error)
	if cfg.CRIKeychain.EnableKeychain {
		if cri, err = newCRIProxy(cfg.CRIKeychain.ImageServicePath); err != nil {
			lock.release()
			return nil, err
		}
		criCreds = cri.credentials
	}
	// [kubeconfig_keychain]: pull secrets, asked after CRI's credentials and
	// before the docker config.
	if kube := kubeCredentials(ctx, cfg); kube != nil {
		criCreds = remote.ChainCredentials(criCreds, kube)
	}
	mounter, err := fs.New(fsOptions(cfg, filepath.Join(root, "fs"), m, criCreds))
	if err != nil {
		cri.close()
		lock.release()
		return nil, fmt.Errorf("start lazy filesystem under %s: %w", root, err)
	}
	sn, err := snapshot.New(ctx, snapshot.Options{
		Root:                        filepath.Join(root, "snapshotter"),
		Mounter:                     mounter,
		AllowInvalidMountsOnRestart: cfg.Snapshotter.AllowInvalidMountsOnRestart,
	})
	if err != nil {
		mounter.Close()
		cri.close()
		lock.release()
		return nil, fmt.Errorf("start snapshotter under %s: %w", root, err)
	}
	ms, err := serveMetrics(ctx, cfg, m)
	if err != nil {
		sn.Close()
		mounter.Close()
		cri.close()
		lock.release()
		return nil, err
	}
	dbg, err := startDebug(ctx, cfg.DebugAddress)
	if err != nil {
		ms.close()
		sn.Close()
		mounter.Close()
		cri.close()
		lock.release()
		return nil, err
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	if cri != nil {
		// kubelet's image service endpoint is the daemon's own socket.
		runtime.RegisterImageServiceServer(server, cri)
	}
	return &Service{lock: lock, fs: mounter, snapshotter: sn, server: server, metrics: ms, debug: dbg, cri: cri}, nil
}

// warnOverrides says, once at start, which settings of cfg the daemon does
// not honour on purpose.
func warnOverrides(ctx context.Context, cfg *config.Config) {
	if cfg.DisableVerification {
		log.G(ctx).WithField("key", "disable_verification").
			Warn("disable_verification = true is not honoured: span data is still verified against the zTOC's span digests, " +
				"so that a registry or proxy serving other bytes cannot change what containers read")
	}
}

// newMetrics returns the daemon's metrics, or nil when no_prometheus says
// none are to be collected (as upstream: nothing is registered or served).
func newMetrics(ctx context.Context, cfg *config.Config) *metrics.Metrics {
	if cfg.NoPrometheus {
		l := log.G(ctx)
		if cfg.MetricsAddress != "" {
			l = l.WithField("metrics_address", cfg.MetricsAddress)
		}
		l.Info("no_prometheus: metrics are neither collected nor served")
		return nil
	}
	return metrics.New()
}

// fsOptions maps the configuration onto the lazy filesystem's options.
// criCreds, when not nil, are credentials captured from CRI pulls, tried
// before the docker config.
func fsOptions(cfg *config.Config, root string, m *metrics.Metrics, criCreds func(string) (string, string, error)) fs.Options {
	ropts := registryOptions(cfg)
	if criCreds != nil {
		ropts.Credentials = remote.ChainCredentials(criCreds, ropts.Credentials)
	}
	return fs.Options{
		Root:         root,
		Registry:     remote.New(observed(ropts, m)),
		Background:   backgroundOptions(cfg),
		Metrics:      m,
		FetchTimeout: spanFetchTimeout(cfg),
		V1:           cfg.PullModes.SOCIv1.Enable,
		V2:           cfg.PullModes.SOCIv2.Enable,
		MinLayerSize: cfg.Snapshotter.MinLayerSize,
		MountTimeout: time.Duration(cfg.MountTimeoutSec) * time.Second,
		// Unbounded (-1) is no bound for the cache too.
		MaxCacheBytes: max(int64(cfg.DirectoryCache.MaxBytes), 0),

		// [limits]: bytes being decompressed at once on
		// the node ([limits] max_decompress_bytes); the registry client's
		// request slots (max_concurrency) are set in registryOptions.
		MaxDecompressBytes: int64(cfg.Limits.MaxDecompressBytes),
		// [limits] on indices, zTOCs and trees.
		IndexLimits: index.Limits{
			MaxIndexEntries:  cfg.Limits.MaxIndexEntries,
			MaxZTOCBytes:     int64(cfg.Limits.MaxZTOCBytes),
			MaxZTOCEntries:   cfg.Limits.MaxZTOCEntries,
			MaxZTOCHeapBytes: int64(cfg.Limits.MaxZTOCHeapBytes),
		},
		MaxTreeDepth: cfg.Limits.MaxTreeDepth,

		AttrTimeout:       time.Duration(cfg.Fuse.AttrTimeoutSec) * time.Second,
		EntryTimeout:      time.Duration(cfg.Fuse.EntryTimeoutSec) * time.Second,
		NegativeTimeout:   time.Duration(cfg.Fuse.NegativeTimeoutSec) * time.Second,
		FuseDebug:         cfg.Debug,
		LogFuseOperations: cfg.Fuse.LogFuseOperations,
		VerifyRetries:     cfg.Blob.MaxSpanVerificationRetries,
	}
}

// Serve answers containerd on l until ctx is done, then stops gracefully:
// calls in flight finish (bounded by stopGrace) and l is closed, which
// removes a unix socket file.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	served := make(chan error, 1)
	go func() { served <- s.server.Serve(l) }()
	notify(ctx, "READY=1")
	log.G(ctx).WithField("address", l.Addr().String()).Info("serving snapshots API")

	select {
	case err := <-served:
		return fmt.Errorf("serve snapshots API: %w", err)
	case <-ctx.Done():
	}
	notify(ctx, "STOPPING=1")
	log.G(ctx).Info("stopping: waiting for calls in flight")
	stopped := make(chan struct{})
	go func() {
		s.server.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		log.G(ctx).Warnf("calls still in flight after %s; stopping anyway", stopGrace)
		s.server.Stop()
	}
	if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve snapshots API: %w", err)
	}
	return nil
}

// Close releases the snapshotter, unmounts the lazily loaded layers (their
// FUSE server is this process) and releases the root lock.
func (s *Service) Close() error {
	err := errors.Join(s.metrics.close(), s.debug.close(), s.snapshotter.Close(), s.fs.Close(), s.cri.close())
	if lerr := s.lock.release(); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("close service: %w", err)
	}
	return nil
}
