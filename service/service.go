package service

import (
	"context"
	"encoding/json"
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
	"github.com/fastsoci/soci-snapshotter/fs/linkrate"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/fs/trace"
	"github.com/fastsoci/soci-snapshotter/fusehost"
	"github.com/fastsoci/soci-snapshotter/internal/idlemem"
	"github.com/fastsoci/soci-snapshotter/metrics"
	"github.com/fastsoci/soci-snapshotter/snapshot"
)

// stopGrace bounds how long a graceful stop waits for in-flight calls: the
// daemon exits within a few seconds whatever runs (nothing it holds
// matters to running containers; their layers are the FUSE host's).
const stopGrace = 3 * time.Second

// hostStartTimeout bounds how long a stopped start-up waits to shut down a
// FUSE host it started.
const hostStartTimeout = 30 * time.Second

// Service is a running daemon: the snapshotter behind a gRPC server. The
// lazily loaded layers are served by the FUSE host, which it talks to.
type Service struct {
	lock        *rootLock
	hosts       *fusehost.Client
	snapshotter *snapshot.Snapshotter
	server      *grpc.Server
	metrics     *metricsServer // nil when metrics_address is empty
	debug       *debugServer   // nil when debug_address is empty
	cri         *criProxy      // nil unless [cri_keychain] is enabled
	criCreds    func(string) (string, string, error)
	puller      *puller // nil unless [pull_modes.parallel_pull_unpack] is on
	// idle returns the heap's free memory to the system once the gRPC
	// calls of a burst (a pull, a container start) are over.
	idle *idlemem.Releaser
}

// The FUSE hosts serve the snapshotter's remote layers and free a layer's
// data when its snapshot is removed.
var (
	_ snapshot.Mounter  = (*fusehost.Client)(nil)
	_ snapshot.Releaser = (*fusehost.Client)(nil)
)

// New builds the daemon from cfg, keeping all state under root. It adopts
// the FUSE host of its own build that runs on root, or starts one with host
// (its ID is set here), and retires the hosts of other builds.
func New(ctx context.Context, cfg *config.Config, root string, host fusehost.Command) (_ *Service, err error) {
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	lock, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	undo.push(func() { lock.release() })
	warnOverrides(ctx, cfg)
	var cri *criProxy
	var criCreds func(string) (string, string, error)
	if cfg.CRIKeychain.EnableKeychain {
		if cri, err = newCRIProxy(cfg.CRIKeychain.ImageServicePath); err != nil {
			return nil, err
		}
		undo.push(func() { cri.close() })
		criCreds = cri.credentials
	}
	// A changed configuration gets a host of its own, as an upgrade does:
	// an adopted host would go on with the settings it started with.
	settings, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("fingerprint the configuration: %w", err)
	}
	if host.ID, err = fusehost.ExecutableID(settings); err != nil {
		return nil, err
	}
	hosts, err := fusehost.Connect(ctx, fusehost.ClientOptions{
		Root: root, ID: host.ID, Launch: host.Launcher(), Credentials: criCreds,
		MountTimeout: mountTimeout(cfg),
	})
	if err != nil {
		return nil, fmt.Errorf("FUSE host of %s: %w", root, err)
	}
	undo.push(func() { hosts.Close() })
	s := &Service{lock: lock, hosts: hosts, cri: cri, criCreds: criCreds}
	undo.push(func() { s.stopLaunchedHost(ctx) })
	if err := s.start(ctx, cfg, root); err != nil {
		return nil, err
	}
	return s, nil
}

// undoStack holds what a failing constructor must undo, run last first.
type undoStack []func()

func (u *undoStack) push(f func()) { *u = append(*u, f) }

func (u undoStack) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// stopLaunchedHost shuts down the FUSE host if this start-up started it:
// no container can use it yet (a host that was running is left alone).
func (s *Service) stopLaunchedHost(ctx context.Context) {
	if !s.hosts.Launched() {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), hostStartTimeout)
	defer cancel()
	if err := s.hosts.Shutdown(sctx); err != nil {
		log.G(ctx).WithError(err).Warn("could not shut down the FUSE host this start-up started")
	}
}

// Abort closes a service that will not serve (its socket could not be
// opened): as Close, and the FUSE host is shut down if New started it.
func (s *Service) Abort(ctx context.Context) {
	s.stopLaunchedHost(ctx)
	if err := s.Close(); err != nil {
		log.G(ctx).WithError(err).Warn("close service")
	}
}

// start opens the snapshotter (restoring remote snapshots through the
// hosts) and the metrics and debug endpoints.
func (s *Service) start(ctx context.Context, cfg *config.Config, root string) (err error) {
	var undo undoStack
	defer func() {
		if err != nil {
			undo.run()
		}
	}()
	var pm *pullMetrics
	if !cfg.NoPrometheus {
		pm = newPullMetrics()
	}
	puller, err := newPuller(ctx, cfg, root, s.criCreds, pm)
	if err != nil {
		return fmt.Errorf("start parallel pull under %s: %w", root, err)
	}
	sopts := snapshot.Options{
		Root:                        filepath.Join(root, "snapshotter"),
		Mounter:                     s.hosts,
		AllowInvalidMountsOnRestart: cfg.Snapshotter.AllowInvalidMountsOnRestart,
	}
	if puller != nil {
		undo.push(func() { puller.Close() })
		sopts.Puller, sopts.PullAll = puller, cfg.PullModes.Parallel.Enable
	} else {
		pm = nil
	}
	sn, err := snapshot.New(ctx, sopts)
	if err != nil {
		return fmt.Errorf("start snapshotter under %s: %w", root, err)
	}
	undo.push(func() { sn.Close() })
	ms, err := serveMetrics(ctx, cfg, daemonMetrics(ctx, cfg, s.hosts, pm.collectors()...))
	if err != nil {
		return err
	}
	undo.push(func() { ms.close() })
	dbg, err := startDebug(ctx, cfg.DebugAddress)
	if err != nil {
		return err
	}
	s.idle = idlemem.New(idlemem.Options{Release: func(free uint64) {
		idlemem.ReturnFree()
		log.G(ctx).WithField("bytes", free).Debug("calls quiet: returned the heap's free memory to the system")
	}, OnQuiet: func() { releaseExecutable(ctx, "calls quiet") }})
	server := grpc.NewServer(grpc.ChainUnaryInterceptor(s.touchUnary), grpc.ChainStreamInterceptor(s.touchStream))
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	if s.cri != nil {
		// kubelet's image service endpoint is the daemon's own socket.
		runtime.RegisterImageServiceServer(server, s.cri)
	}
	s.snapshotter, s.metrics, s.debug, s.server, s.puller = sn, ms, dbg, server, puller
	return nil
}

// mountTimeout is [mount_timeout_sec]: how long the host may take to
// resolve a layer.
func mountTimeout(cfg *config.Config) time.Duration {
	if d := cfg.MountTimeoutSec.Duration(); d > 0 {
		return d
	}
	return 30 * time.Second
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

// newMetrics returns the FUSE host's metrics, or nil when no_prometheus says
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

// fsOptions maps the configuration onto the lazy filesystem's options (in
// the FUSE host).
// criCreds, when not nil, are credentials captured from CRI pulls, tried
// before the docker config.
func fsOptions(cfg *config.Config, root string, m *metrics.Metrics, criCreds func(string) (string, string, error)) fs.Options {
	ropts := registryOptions(cfg)
	if criCreds != nil {
		ropts.Credentials = remote.ChainCredentials(criCreds, ropts.Credentials)
	}
	// The link's rate, measured from the registry client's transfers,
	// tells the background walk whether to start at the mount.
	link := &linkrate.Meter{}
	return fs.Options{
		Root:         root,
		Registry:     remote.New(observed(ropts, m, link)),
		Background:   backgroundOptions(cfg, link),
		Metrics:      m,
		FetchTimeout: spanFetchTimeout(cfg),
		V1:           cfg.PullModes.SOCIv1.Enable,
		V2:           cfg.PullModes.SOCIv2.Enable,
		MinLayerSize: cfg.Snapshotter.MinLayerSize,
		MountTimeout: mountTimeout(cfg),
		// Unbounded (-1) is no bound for the cache too.
		MaxCacheBytes: max(int64(cfg.DirectoryCache.MaxBytes), 0),
		// [directory_cache] max_cache_fds: span cache files kept open.
		MaxCacheFiles: cfg.DirectoryCache.MaxCacheFds,

		// [limits]: bytes being decompressed at once on
		// the node ([limits] max_decompress_bytes); the registry client's
		// request slots (max_concurrency) are set in registryOptions.
		MaxDecompressBytes: int64(cfg.Limits.MaxDecompressBytes),
		// [limits] neighbour_fetch_bytes: fetches around scattered misses.
		NeighbourBytes: int64(cfg.Limits.NeighbourFetchBytes),
		// [limits] on indices, zTOCs and trees.
		IndexLimits:  indexLimits(cfg),
		MaxTreeDepth: cfg.Limits.MaxTreeDepth,

		AttrTimeout:         time.Duration(cfg.Fuse.AttrTimeoutSec) * time.Second,
		EntryTimeout:        time.Duration(cfg.Fuse.EntryTimeoutSec) * time.Second,
		NegativeTimeout:     time.Duration(cfg.Fuse.NegativeTimeoutSec) * time.Second,
		FuseDebug:           cfg.Debug,
		LogFuseOperations:   cfg.Fuse.LogFuseOperations,
		Passthrough:         cfg.Fuse.Passthrough,
		PassthroughMaxBytes: int64(cfg.Fuse.PassthroughMaxBytes),
		VerifyRetries:       cfg.Blob.MaxSpanVerificationRetries,

		// [prefetch]: max_concurrency bounds prefetch requests in
		// flight on the node (0: unbounded, within the registry
		// client's request slots).
		Prefetch:            cfg.Prefetch.Enable,
		PrefetchConcurrency: int(min(cfg.Prefetch.MaxConcurrency, 1<<20)),
		Record:              recordOptions(cfg.Prefetch),
	}
}

// indexLimits maps [limits] onto the bounds of indices and zTOCs.
func indexLimits(cfg *config.Config) index.Limits {
	return index.Limits{
		MaxIndexEntries:  cfg.Limits.MaxIndexEntries,
		MaxZTOCBytes:     int64(cfg.Limits.MaxZTOCBytes),
		MaxZTOCEntries:   cfg.Limits.MaxZTOCEntries,
		MaxZTOCHeapBytes: int64(cfg.Limits.MaxZTOCHeapBytes),
	}
}

// Serve answers containerd on l until ctx is done, then stops gracefully:
// calls in flight finish (bounded by stopGrace) and l is closed, which
// removes a unix socket file.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	idleCtx, stopIdle := context.WithCancel(ctx)
	defer stopIdle()
	go s.idle.Run(idleCtx)
	s.idle.Touch() // start-up is a burst too: a daemon no call reaches releases its pages as well
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

// touchUnary and touchStream mark the end of each call as activity, for
// the idle release of the heap's free memory.
func (s *Service) touchUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	defer s.idle.Touch()
	return h(ctx, req)
}

func (s *Service) touchStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	defer s.idle.Touch()
	return h(srv, ss)
}

// Close stops the daemon's endpoints, closes the snapshotter and releases
// the root lock. The FUSE hosts are left alone: running containers keep
// their lazily loaded layers, and the next daemon adopts them.
func (s *Service) Close() error {
	err := errors.Join(s.metrics.close(), s.debug.close(), s.snapshotter.Close(), s.closePuller(), s.hosts.Close(), s.cri.close())
	if lerr := s.lock.release(); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("close service: %w", err)
	}
	return nil
}

// closePuller stops the parallel pulls in flight (after the snapshotter, so
// that no Prepare is waiting for one).
func (s *Service) closePuller() error {
	if s.puller == nil {
		return nil
	}
	return s.puller.Close()
}

// recordOptions maps [prefetch] record* onto the FS's trace recorder
// options; nil when recording is off.
func recordOptions(p config.PrefetchConfig) *trace.Options {
	if !p.Record {
		return nil
	}
	return &trace.Options{Window: p.RecordSeconds.Duration(), UntilFile: p.RecordUntilFile}
}
