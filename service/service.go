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

	"github.com/fastsoci/soci-snapshotter/config"
	"github.com/fastsoci/soci-snapshotter/fs"
	"github.com/fastsoci/soci-snapshotter/snapshot"
)

// stopGrace bounds how long a graceful stop waits for in-flight calls.
const stopGrace = 30 * time.Second

// Service is a running daemon: the snapshotter behind a gRPC server.
type Service struct {
	lock        *rootLock
	snapshotter *snapshot.Snapshotter
	server      *grpc.Server
}

// New builds the daemon from cfg, keeping all state under root.
func New(ctx context.Context, cfg *config.Config, root string) (*Service, error) {
	lock, err := lockRoot(root)
	if err != nil {
		return nil, err
	}
	mounter := fs.New(fs.Options{Root: filepath.Join(root, "fs")})
	sn, err := snapshot.New(ctx, snapshot.Options{
		Root:                        filepath.Join(root, "snapshotter"),
		Mounter:                     mounter,
		AllowInvalidMountsOnRestart: cfg.Snapshotter.AllowInvalidMountsOnRestart,
	})
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("start snapshotter under %s: %w", root, err)
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	return &Service{lock: lock, snapshotter: sn, server: server}, nil
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

// Close releases the snapshotter and the root lock. Lazily loaded layers stay
// mounted so that running containers survive a daemon restart.
func (s *Service) Close() error {
	err := s.snapshotter.Close()
	if lerr := s.lock.release(); err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("close service: %w", err)
	}
	return nil
}
