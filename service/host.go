package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs"
	"github.com/fastsoci/soci-snapshotter/fs/index/ctdcontent"
	"github.com/fastsoci/soci-snapshotter/fs/remote"
	"github.com/fastsoci/soci-snapshotter/fusehost"
	"github.com/fastsoci/soci-snapshotter/internal/idlemem"
	"github.com/fastsoci/soci-snapshotter/internal/version"
)

// limitHostMemory sets the FUSE host's soft limit on the Go runtime's
// memory (debug.SetMemoryLimit) to [limits] host_memory_limit unless
// GOMEMLIMIT sets one: the heap's garbage is collected before the total
// reaches it, instead of when the heap doubled since the last collection,
// which the stream of span and chunk buffers of fetches and of the
// background walk would otherwise reach. It is soft: a host whose live data
// needs more gets it, at the price of more frequent collections (up to
// half the CPU once live data passes it, Go's cap). Most of what the host
// allocates is pointer-free byte slices, cheap to collect: on the
// background walk of 4 layers (BenchmarkBackgroundCompletion) 48 MiB costs
// no measurable CPU against 96 MiB. But the file trees of mounted images
// are live (a 50,000-file image whose every file was stat'ed: about 42 MiB
// with go-fuse's inodes), and at 48 MiB that image's run took twice the
// CPU: the default, 64 MiB, leaves such trees room. The background walk's
// own memory is bounded by its budget (fs/background), not by this limit.
//
// Below the limit the heap may grow by hostGCPercent of the live heap
// before a collection (GOGC in the environment overrides it): a host whose
// live data is small (the walk of a 1 GB image: buffers of spans and chunks
// in flight) then stays well under the limit instead of growing to twice
// its live heap.
func limitHostMemory(ctx context.Context, limit int64) {
	if v, set := os.LookupEnv("GOGC"); set {
		log.G(ctx).WithField("GOGC", v).Debug("FUSE host GC percent from the environment")
	} else {
		debug.SetGCPercent(hostGCPercent)
	}
	if v, set := os.LookupEnv("GOMEMLIMIT"); set {
		log.G(ctx).WithField("GOMEMLIMIT", v).Debug("FUSE host memory limit from the environment")
		return
	}
	debug.SetMemoryLimit(limit)
}

// hostGCPercent is the FUSE host's GOGC (Go's default is 100).
const hostGCPercent = 50

// The FUSE host's file system serves fusehost's protocol.
var _ fusehost.FS = (*fs.FS)(nil)

// RunHost is the composition root of the FUSE host id of root (the
// fuse-host subcommand): it holds the host's lock, builds the lazy
// filesystem from cfg exactly as the daemon used to, and serves fusehost's
// protocol on the host's socket. It returns after POST /shutdown, once the
// host is retired and serves no layer, or when ctx is done (SIGTERM): then
// every layer is unmounted first (lazily when in use).
func RunHost(ctx context.Context, cfg *config.Config, root, id string) error {
	limitHostMemory(ctx, int64(cfg.Limits.HostMemoryLimit))
	lock, err := lockHost(root, id)
	if err != nil {
		return err
	}
	defer lock.release()
	m := newMetrics(ctx, cfg)
	creds := fusehost.NewCredentials()
	// Credentials: those the daemon's CRI proxy captured (sent with each
	// mount), then the cluster's pull secrets ([kubeconfig_keychain]), then
	// the docker config (fsOptions).
	lookup := creds.Lookup
	if kube := kubeCredentials(ctx, cfg); kube != nil {
		lookup = remote.ChainCredentials(creds.Lookup, kube)
	}
	fsOpts := fsOptions(cfg, filepath.Join(root, "fs"), m, lookup)
	// Start-up, each burst of protocol calls (mounts, unmounts, the
	// daemon's checks, scrapes) and the walks map code; once they are over
	// and the calls quiet the host unmaps the executable's pages. Its heap
	// at rest is live (the trees of mounted layers, go-fuse's waiting
	// readers; the walks' garbage is returned when they end, OnIdle), so
	// that is all it releases then.
	rest := idlemem.New(idlemem.Options{
		KeepHeap: true,
		OnQuiet:  func() { releaseExecutable(ctx, "calls quiet") },
	})
	rest.Touch()
	if b := fsOpts.Background; b != nil && b.OnIdle != nil {
		free := b.OnIdle
		b.OnIdle = func() {
			free()
			rest.Touch()
		}
	}
	if cfg.ContentStore.Type == config.ContentStoreContainerd {
		// SOCI indices and zTOCs are read from containerd's content store
		// (where `soci create` leaves them) before the registry.
		cs, err := ctdcontent.New(cfg.ContentStore.ContainerdAddress)
		if err != nil {
			return err
		}
		defer cs.Close()
		fsOpts.ContentSource = cs
		log.G(ctx).WithField("address", cfg.ContentStore.ContainerdAddress).
			Info("reading SOCI indices and zTOCs from containerd's content store before the registry")
	}
	fsys, err := fs.New(fsOpts)
	if err != nil {
		return fmt.Errorf("start lazy filesystem under %s: %w", root, err)
	}
	socket := fusehost.SocketPath(root, id)
	l, err := listenUnix(socket)
	if err != nil {
		fsys.Close()
		return fmt.Errorf("FUSE host socket: %w", err)
	}
	exit := make(chan string, 1)
	opts := fusehost.ServerOptions{
		ID: id, Version: version.Version, FS: fsys, Creds: creds,
		Exit: func(reason string) {
			select {
			case exit <- reason:
			default:
			}
		},
	}
	if m != nil {
		opts.Metrics = m.Handler()
	}
	if cfg.DebugAddress != "" {
		// The daemon serves pprof at debug_address; the host's is on its
		// own socket (0600): curl --unix-socket <host socket>
		// http://host/debug/pprof/heap.
		opts.Debug = pprofHandler()
	}
	restCtx, stopRest := context.WithCancel(ctx)
	defer stopRest()
	go rest.Run(restCtx)
	srv := fusehost.Serve(ctx, l, touching(fusehost.NewServer(opts).Handler(), rest))
	log.G(ctx).WithField("socket", socket).WithField("pid", os.Getpid()).Info("FUSE host serving")

	var closeErr error
	select {
	case <-ctx.Done():
		log.G(ctx).Info("FUSE host stopping on signal: unmounting every layer")
		closeErr = fsys.Close()
	case reason := <-exit:
		log.G(ctx).WithField("reason", reason).Info("FUSE host exiting")
		if reason != "shutdown" { // shutdown closed it already
			closeErr = fsys.Close()
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = errors.Join(closeErr, srv.Shutdown(sctx))
	l.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("FUSE host %s: %w", id, err)
	}
	return nil
}

// hostLock is the flock of one FUSE host, held for its life.
type hostLock struct{ f *os.File }

// lockHost takes the lock of host id of root and writes this process's pid
// into it (cleanup reads it to kill a host that does not answer).
func lockHost(root, id string) (*hostLock, error) {
	if err := os.MkdirAll(fusehost.Dir(root), 0o700); err != nil {
		return nil, fmt.Errorf("create FUSE host directory: %w", err)
	}
	path := fusehost.LockPath(root, id)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open FUSE host lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("FUSE host %s of root %s is already running", id, root)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("write pid into %s: %w", path, err)
	}
	return &hostLock{f: f}, nil
}

func (l *hostLock) release() { l.f.Close() }

// Cleanup ends every FUSE host of root and removes what they leave (the
// cleanup subcommand, for uninstalls and tests). It refuses while a daemon
// runs on root.
func Cleanup(ctx context.Context, root string) error {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	lock, err := lockRoot(root)
	if err != nil {
		return fmt.Errorf("cleanup: %w; stop the daemon first", err)
	}
	defer lock.release()
	return fusehost.Cleanup(ctx, root)
}
