package fusehost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
)

// FS is what the host serves layers with: fs.FS satisfies it.
type FS interface {
	Mount(ctx context.Context, mountpoint string, labels map[string]string) error
	Check(ctx context.Context, mountpoint string, labels map[string]string) error
	Unmount(ctx context.Context, mountpoint string) error
	Release(ctx context.Context, mountpoint string) error
	// Mountpoints lists the mountpoints served.
	Mountpoints() []string
	// Close unmounts every layer (lazily, when busy).
	Close() error
}

// ServerOptions configures a Server.
type ServerOptions struct {
	// ID names the host (see ExecutableID); Version is the build's.
	ID, Version string
	FS          FS
	// Creds receives the credentials sent with each mount; nil: dropped.
	Creds *Credentials
	// Metrics serves GET /metrics; nil: 404.
	Metrics http.Handler
	// Debug serves GET /debug/pprof/ (net/http/pprof); nil: 404.
	Debug http.Handler
	// Exit is called once when the host is to end: after POST /shutdown
	// (every layer unmounted), or once it is retired and serves no layer.
	Exit func(reason string)
}

// Server answers the host protocol over FS. It is safe for concurrent use.
type Server struct {
	opts ServerOptions
	// mu is held shared by calls that may add a mount, and exclusively to
	// decide to exit, so that no mount is made by a host about to exit.
	mu      sync.RWMutex
	retired bool
	exiting bool
}

// NewServer returns a server of opts.
func NewServer(opts ServerOptions) *Server {
	if opts.Exit == nil {
		opts.Exit = func(string) {}
	}
	return &Server{opts: opts}
}

// Handler is the protocol's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+pathMount, s.mount)
	mux.HandleFunc("POST "+pathCheck, s.check)
	mux.HandleFunc("POST "+pathUnmount, s.unmount)
	mux.HandleFunc("POST "+pathRelease, s.release)
	mux.HandleFunc("GET "+pathMounts, s.mounts)
	mux.HandleFunc("GET "+pathHealth, s.health)
	mux.HandleFunc("POST "+pathRetire, s.retire)
	mux.HandleFunc("POST "+pathShutdown, s.shutdown)
	mux.HandleFunc("GET "+pathMetrics, func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Metrics == nil {
			http.NotFound(w, r)
			return
		}
		s.opts.Metrics.ServeHTTP(w, r)
	})
	if s.opts.Debug != nil {
		mux.Handle("GET "+pathDebug, s.opts.Debug)
	}
	return mux
}

// Serve answers on l until ctx is done or Shutdown; requests' contexts
// carry ctx's values (its logger).
func Serve(ctx context.Context, l net.Listener, h http.Handler) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Error("FUSE host: serve protocol")
		}
	}()
	return srv
}

// begin enters a call that may add a mount; ok is false once the host is
// exiting.
func (s *Server) begin() (end func(), ok bool) {
	s.mu.RLock()
	if s.exiting {
		s.mu.RUnlock()
		return nil, false
	}
	return s.mu.RUnlock, true
}

// maybeExit ends a retired host that serves no layer any more.
func (s *Server) maybeExit() {
	s.mu.Lock()
	if !s.retired || s.exiting || len(s.opts.FS.Mountpoints()) > 0 {
		s.mu.Unlock()
		return
	}
	s.exiting = true
	s.mu.Unlock()
	s.opts.Exit("retired, no layer served")
}

var errExiting = fmt.Errorf("FUSE host is exiting: %w", errdefs.ErrUnavailable)

// decode reads a JSON request body into v; a malformed one is answered.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("decode %s request: %v: %w", r.URL.Path, err, errdefs.ErrInvalidArgument))
		return false
	}
	return true
}

// checkMountpoint refuses a mountpoint that is not a clean absolute path.
func checkMountpoint(w http.ResponseWriter, mp string) bool {
	if mp == "" || !filepath.IsAbs(mp) || filepath.Clean(mp) != mp {
		writeError(w, fmt.Errorf("mountpoint %q is not a clean absolute path: %w", mp, errdefs.ErrInvalidArgument))
		return false
	}
	return true
}

func answer(w http.ResponseWriter, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) mount(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if !decode(w, r, &req) || !checkMountpoint(w, req.Mountpoint) {
		return
	}
	if req.Namespace != "" {
		if err := identifiers.Validate(req.Namespace); err != nil {
			writeError(w, fmt.Errorf("mount request: namespace: %w", err))
			return
		}
	}
	end, ok := s.begin()
	if !ok {
		writeError(w, errExiting)
		return
	}
	s.opts.Creds.Add(req.Creds)
	ctx := r.Context()
	if req.LocalOnly {
		ctx = mountctx.WithLocalOnly(ctx)
	}
	if req.Namespace != "" {
		ctx = namespaces.WithNamespace(ctx, req.Namespace)
	}
	err := s.opts.FS.Mount(ctx, req.Mountpoint, req.Labels)
	end()
	if err != nil {
		s.maybeExit()
	}
	answer(w, err)
}

func (s *Server) check(w http.ResponseWriter, r *http.Request) {
	var req CheckRequest
	if !decode(w, r, &req) || !checkMountpoint(w, req.Mountpoint) {
		return
	}
	answer(w, s.opts.FS.Check(r.Context(), req.Mountpoint, req.Labels))
}

func (s *Server) unmount(w http.ResponseWriter, r *http.Request) {
	var req MountpointRequest
	if !decode(w, r, &req) || !checkMountpoint(w, req.Mountpoint) {
		return
	}
	err := s.opts.FS.Unmount(r.Context(), req.Mountpoint)
	answer(w, err)
	s.maybeExit()
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	var req MountpointRequest
	if !decode(w, r, &req) || !checkMountpoint(w, req.Mountpoint) {
		return
	}
	err := s.opts.FS.Release(r.Context(), req.Mountpoint)
	answer(w, err)
	s.maybeExit()
}

func (s *Server) mounts(w http.ResponseWriter, _ *http.Request) {
	mps := s.opts.FS.Mountpoints()
	if mps == nil {
		mps = []string{}
	}
	writeJSON(w, http.StatusOK, MountsResponse{Mountpoints: mps})
}

// Health reports the host's state.
func (s *Server) Health() Health {
	s.mu.RLock()
	retired := s.retired || s.exiting
	s.mu.RUnlock()
	return Health{
		ID: s.opts.ID, Version: s.opts.Version, PID: pid(),
		Mounts: len(s.opts.FS.Mountpoints()), Goroutines: runtime.NumGoroutine(), Retired: retired,
	}
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Health())
}

func (s *Server) retire(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	first := !s.retired
	s.retired = true
	s.mu.Unlock()
	if first {
		log.G(r.Context()).WithField("mounts", len(s.opts.FS.Mountpoints())).
			Info("FUSE host retired: exits once its last layer is unmounted")
	}
	w.WriteHeader(http.StatusNoContent)
	s.maybeExit()
}

func (s *Server) shutdown(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	already := s.exiting
	s.exiting = true
	s.mu.Unlock()
	if already {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	log.G(r.Context()).Info("FUSE host shutting down: unmounting every layer")
	err := s.opts.FS.Close()
	answer(w, err)
	s.opts.Exit("shutdown")
}
