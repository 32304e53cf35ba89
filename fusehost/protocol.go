package fusehost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/containerd/errdefs"

	"github.com/fastsoci/soci-snapshotter/internal/errclass"
)

// The host's endpoints.
const (
	pathMount    = "/mount"        // POST MountRequest
	pathCheck    = "/check"        // POST CheckRequest
	pathUnmount  = "/unmount"      // POST MountpointRequest
	pathRelease  = "/release"      // POST MountpointRequest
	pathMounts   = "/mounts"       // GET -> MountsResponse
	pathHealth   = "/health"       // GET -> Health
	pathRetire   = "/retire"       // POST
	pathShutdown = "/shutdown"     // POST
	pathMetrics  = "/metrics"      // GET, Prometheus text format
	pathDebug    = "/debug/pprof/" // GET, net/http/pprof, with debug_address set
)

// maxRequestBytes bounds a request body (labels of one layer, a few
// credentials).
const maxRequestBytes = 1 << 20

// MountRequest asks the host to serve a layer.
type MountRequest struct {
	Mountpoint string            `json:"mountpoint"`
	Labels     map[string]string `json:"labels"`
	// LocalOnly: mount from local state only (mountctx.WithLocalOnly).
	LocalOnly bool `json:"local_only"`
	// Namespace is the containerd namespace of the snapshot call, if any:
	// the host reads containerd's content store in it.
	Namespace string `json:"namespace,omitempty"`
	// Creds are credentials for the image's registry host, tried before
	// the host's docker config; latest wins.
	Creds []Credential `json:"creds,omitempty"`
}

// Credential is a user name and secret for a registry host.
type Credential struct {
	Host     string `json:"host"`
	Username string `json:"username"`
	Secret   string `json:"secret"`
}

// CheckRequest asks whether the layer at Mountpoint is still served.
type CheckRequest struct {
	Mountpoint string            `json:"mountpoint"`
	Labels     map[string]string `json:"labels"`
}

// MountpointRequest names a mountpoint (unmount, release).
type MountpointRequest struct {
	Mountpoint string `json:"mountpoint"`
}

// MountsResponse lists the mountpoints a host serves.
type MountsResponse struct {
	Mountpoints []string `json:"mountpoints"`
}

// Health is a host's answer to GET /health.
type Health struct {
	ID         string `json:"id"`
	Version    string `json:"version"`
	PID        int    `json:"pid"`
	Mounts     int    `json:"mounts"`
	Goroutines int    `json:"goroutines"`
	Retired    bool   `json:"retired"`
}

// errorResponse is the body of a failed call: the error's errdefs class
// travels with its message, so that the caller can tell "no index" (fall
// back) from "found bad" (skip) from other failures.
type errorResponse struct {
	Class   string `json:"class"`
	Message string `json:"message"`
}

// The error classes on the wire, and the errdefs error each stands for.
var classes = []struct {
	name string
	err  error
}{
	// Before not_found, which it is too: the first class that matches
	// names an error.
	{"no_index", errclass.ErrNoIndex},
	{"not_found", errdefs.ErrNotFound},
	{"failed_precondition", errdefs.ErrFailedPrecondition},
	{"unavailable", errdefs.ErrUnavailable},
	{"invalid_argument", errdefs.ErrInvalidArgument},
	{"already_exists", errdefs.ErrAlreadyExists},
	{"deadline_exceeded", context.DeadlineExceeded},
	{"canceled", context.Canceled},
	{"out_of_range", errdefs.ErrOutOfRange},
	{"data_loss", errdefs.ErrDataLoss},
	{"internal", errdefs.ErrInternal},
	{"not_implemented", errdefs.ErrNotImplemented},
	{"permission_denied", errdefs.ErrPermissionDenied},
	{"unauthenticated", errdefs.ErrUnauthenticated},
	{"resource_exhausted", errdefs.ErrResourceExhausted},
	{"aborted", errdefs.ErrAborted},
	{"conflict", errdefs.ErrConflict},
}

// classOf names err's errdefs class ("" for none).
func classOf(err error) string {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return ""
}

// remoteError is an error that came over the wire: its message as the host
// wrote it, and the errdefs error of its class (nil when it had none).
type remoteError struct {
	msg   string
	class error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.class }

// decodeError turns a failed response's body back into an error of the same
// errdefs class.
func decodeError(status int, body []byte) error {
	var r errorResponse
	if err := json.Unmarshal(body, &r); err != nil || r.Message == "" {
		return fmt.Errorf("FUSE host answered %d: %.200q", status, body)
	}
	e := &remoteError{msg: r.Message}
	for _, c := range classes {
		if c.name == r.Class {
			e.class = c.err
		}
	}
	return e
}

// writeError answers err with its class.
func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errdefs.IsNotFound(err):
		status = http.StatusNotFound
	case errdefs.IsInvalidArgument(err):
		status = http.StatusBadRequest
	case errdefs.IsUnavailable(err):
		status = http.StatusServiceUnavailable
	case errdefs.IsFailedPrecondition(err):
		status = http.StatusPreconditionFailed
	}
	writeJSON(w, status, errorResponse{Class: classOf(err), Message: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
