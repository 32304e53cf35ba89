package fusehost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	distribution "github.com/distribution/reference"

	"github.com/fastsoci/soci-snapshotter/internal/mountctx"
)

// Default bounds of the client's calls.
const (
	defaultCallTimeout   = 10 * time.Second
	defaultHealthTimeout = 10 * time.Second
	mountTimeoutMargin   = 10 * time.Second
	// maxResponseBytes bounds what is read of an answer (metrics included).
	maxResponseBytes = 64 << 20
)

// imageRefLabel is the CRI label naming a layer's image (fs/source reads
// it too); the client only takes the registry host from it.
const imageRefLabel = "containerd.io/snapshot/cri.image-ref"

// Launcher starts the daemon's own host; exited yields once the process
// ends (its Wait result).
type Launcher func(ctx context.Context) (exited <-chan error, err error)

// ClientOptions configures a Client.
type ClientOptions struct {
	// Root is the daemon's root directory; ID names the daemon's own host.
	Root, ID string
	// Launch starts the own host when none answers; nil: never (calls fail).
	Launch Launcher
	// Credentials answers the registry credentials sent with each mount
	// (the CRI image proxy's); nil: none are sent.
	Credentials func(host string) (user, secret string, err error)
	// MountTimeout bounds resolving a layer in the host ([mount_timeout_sec]);
	// a mount call waits that long plus a margin.
	MountTimeout time.Duration
	// CallTimeout bounds other calls (0: 10 s); HealthTimeout how long a
	// launched host may take to answer (0: 10 s).
	CallTimeout, HealthTimeout time.Duration
}

// Client is the daemon's side of the FUSE hosts: the snapshotter's Mounter
// and Releaser. New mounts go to the daemon's own host; other calls go to
// the host that serves the mountpoint (an older, retired one after an
// upgrade), else to the own host. It is safe for concurrent use.
type Client struct {
	opts ClientOptions
	own  *conn

	launchMu sync.Mutex // one (re)launch at a time
	launched bool       // Connect started the own host
	mu       sync.Mutex
	others   map[string]*conn // retired hosts by id
	routes   map[string]*conn // mountpoint -> the retired host serving it
}

// conn is one host's socket.
type conn struct {
	id     string
	socket string
	http   *http.Client
}

func newConn(id, socket string) *conn {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4, IdleConnTimeout: 30 * time.Second, DisableCompression: true,
	}
	return &conn{id: id, socket: socket, http: &http.Client{Transport: tr}}
}

// errUnreachable marks a call that did not get an answer from the host
// (nobody listens on its socket, or the host died during the call).
var errUnreachable = errors.New("FUSE host unreachable")

// unreachable reports whether err is a call that got no answer.
func unreachable(err error) bool { return errors.Is(err, errUnreachable) }

// call sends in (JSON; nil: no body) to path and decodes the answer into out
// (nil: none expected).
func (c *conn) call(ctx context.Context, method, path string, timeout time.Duration, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s request: %w", path, err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://fusehost"+path, body)
	if err != nil {
		return fmt.Errorf("FUSE host %s: %w", path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("FUSE host %s at %s: %w", path, c.socket, ctx.Err())
		}
		return fmt.Errorf("FUSE host %s at %s: %w: %w: %w", path, c.socket, err, errUnreachable, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("FUSE host %s at %s: read answer: %w: %w: %w", path, c.socket, err, errUnreachable, errdefs.ErrUnavailable)
	}
	if resp.StatusCode >= 300 {
		return decodeError(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("FUSE host %s: decode answer: %w", path, err)
	}
	return nil
}

func (c *conn) health(ctx context.Context, timeout time.Duration) (Health, error) {
	var h Health
	err := c.call(ctx, http.MethodGet, pathHealth, timeout, nil, &h)
	return h, err
}

func (c *conn) mountpoints(ctx context.Context, timeout time.Duration) ([]string, error) {
	var m MountsResponse
	err := c.call(ctx, http.MethodGet, pathMounts, timeout, nil, &m)
	return m.Mountpoints, err
}

// Connect adopts the daemon's own host (the one named opts.ID that
// answers), or starts it; then it retires every other live host of the
// root (older builds) and routes the mountpoints they serve to them.
func Connect(ctx context.Context, opts ClientOptions) (*Client, error) {
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = defaultCallTimeout
	}
	if opts.HealthTimeout <= 0 {
		opts.HealthTimeout = defaultHealthTimeout
	}
	c := &Client{
		opts: opts, own: newConn(opts.ID, SocketPath(opts.Root, opts.ID)),
		others: map[string]*conn{}, routes: map[string]*conn{},
	}
	launched, err := c.ensureOwn(ctx)
	if err != nil {
		return nil, err
	}
	c.launched = launched
	c.retireOthers(ctx)
	return c, nil
}

// Launched reports whether Connect started the own host (none answered).
func (c *Client) Launched() bool { return c.launched }

// Shutdown asks the own host to unmount every layer and exit.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.own.call(ctx, http.MethodPost, pathShutdown, shutdownTimeout, nil, nil)
}

// Own is the health of the daemon's own host.
func (c *Client) Own(ctx context.Context) (Health, error) {
	return c.own.health(ctx, c.opts.CallTimeout)
}

// ensureOwn makes sure the own host answers: adopted when it does, started
// otherwise. It reports whether it started it.
func (c *Client) ensureOwn(ctx context.Context) (bool, error) {
	c.launchMu.Lock()
	defer c.launchMu.Unlock()
	h, err := c.own.health(ctx, c.opts.CallTimeout)
	if err == nil {
		if h.ID != c.opts.ID {
			return false, fmt.Errorf("FUSE host at %s is %q, want %q", c.own.socket, h.ID, c.opts.ID)
		}
		log.G(ctx).WithFields(log.Fields{"host_id": h.ID, "host_pid": h.PID, "mounts": h.Mounts, "retired": h.Retired}).
			Info("adopted running FUSE host")
		return false, nil
	}
	if !unreachable(err) {
		return false, fmt.Errorf("FUSE host at %s: %w", c.own.socket, err)
	}
	if c.opts.Launch == nil {
		return false, err
	}
	if err := removeStale(c.own.socket); err != nil {
		return false, err
	}
	exited, err := c.opts.Launch(ctx)
	if err != nil {
		return false, fmt.Errorf("start FUSE host: %w", err)
	}
	deadline := time.Now().Add(c.opts.HealthTimeout)
	for {
		h, err := c.own.health(ctx, time.Second)
		if err == nil && h.ID == c.opts.ID {
			log.G(ctx).WithFields(log.Fields{"host_id": h.ID, "host_pid": h.PID}).Info("started FUSE host")
			return true, nil
		}
		if err == nil {
			return false, fmt.Errorf("started FUSE host, but %s answers as %q", c.own.socket, h.ID)
		}
		select {
		case werr := <-exited:
			return false, fmt.Errorf("FUSE host exited before it answered (%v); see its log lines (process=fuse-host)", werr)
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("FUSE host did not answer on %s within %s: %w", c.own.socket, c.opts.HealthTimeout, err)
		}
	}
}

// removeStale removes a socket file nobody listens on.
func removeStale(path string) error {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("FUSE host socket %s accepts connections but does not answer", path)
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probe FUSE host socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale FUSE host socket %s: %w", path, err)
	}
	return nil
}

// listSockets returns the ids of the host sockets of root.
func listSockets(root string) ([]string, error) {
	ents, err := os.ReadDir(SocketDir(root))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list FUSE host sockets: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".sock"); ok && e.Type()&os.ModeSocket != 0 {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// retireOthers retires every other live host of the root and routes the
// mountpoints each serves to it; sockets nobody listens on are removed.
func (c *Client) retireOthers(ctx context.Context) {
	ids, err := listSockets(c.opts.Root)
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot look for older FUSE hosts")
		return
	}
	for _, id := range ids {
		if id == c.opts.ID {
			continue
		}
		h := newConn(id, SocketPath(c.opts.Root, id))
		l := log.G(ctx).WithField("host_id", id)
		health, err := h.health(ctx, c.opts.CallTimeout)
		if unreachable(err) {
			if rerr := removeStale(h.socket); rerr != nil {
				l.WithError(rerr).Warn("FUSE host socket neither answers nor is stale")
			}
			continue
		}
		if err != nil {
			l.WithError(err).Warn("FUSE host does not answer; leaving it alone")
			continue
		}
		if err := h.call(ctx, http.MethodPost, pathRetire, c.opts.CallTimeout, nil, nil); err != nil {
			l.WithError(err).Warn("could not retire older FUSE host")
			continue
		}
		mps, err := h.mountpoints(ctx, c.opts.CallTimeout)
		if err != nil {
			l.WithError(err).Warn("could not list the layers of older FUSE host")
		}
		c.mu.Lock()
		c.others[id] = h
		for _, mp := range mps {
			c.routes[mp] = h
		}
		c.mu.Unlock()
		l.WithFields(log.Fields{"host_pid": health.PID, "host_version": health.Version, "mounts": len(mps)}).
			Info("retired older FUSE host: it serves its layers until they are unmounted")
	}
}

// hostFor is the host serving mountpoint: a retired one that lists it,
// else the own host.
func (c *Client) hostFor(ctx context.Context, mountpoint string) *conn {
	c.mu.Lock()
	h, ok := c.routes[mountpoint]
	var others []*conn
	if !ok {
		for _, o := range c.others {
			others = append(others, o)
		}
	}
	c.mu.Unlock()
	if ok {
		return h
	}
	// Refresh from the retired hosts' lists (rare: only while an
	// upgrade's older hosts live).
	for _, o := range others {
		mps, err := o.mountpoints(ctx, c.opts.CallTimeout)
		if err != nil {
			c.drop(ctx, o, err)
			continue
		}
		c.mu.Lock()
		for _, mp := range mps {
			c.routes[mp] = o
		}
		h, ok = c.routes[mountpoint]
		c.mu.Unlock()
		if ok {
			return h
		}
	}
	return c.own
}

// drop forgets a retired host that no longer answers (it exited once its
// last layer was unmounted, or died).
func (c *Client) drop(ctx context.Context, h *conn, why error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.others[h.id] != h {
		return
	}
	delete(c.others, h.id)
	for mp, r := range c.routes {
		if r == h {
			delete(c.routes, mp)
		}
	}
	log.G(ctx).WithError(why).WithField("host_id", h.id).Debug("older FUSE host gone")
}

func (c *Client) unroute(mountpoint string) {
	c.mu.Lock()
	delete(c.routes, mountpoint)
	c.mu.Unlock()
}

// onOwn runs call against the own host; when the host does not answer (it
// died), it is started again once and call retried.
func (c *Client) onOwn(ctx context.Context, call func(*conn) error) error {
	err := call(c.own)
	if !unreachable(err) || c.opts.Launch == nil {
		return err
	}
	log.G(ctx).WithError(err).Warn("FUSE host does not answer; starting it again")
	if _, lerr := c.ensureOwn(ctx); lerr != nil {
		return errors.Join(err, lerr)
	}
	return call(c.own)
}

// Mount asks the own host to serve the layer described by labels at
// mountpoint, with the registry credentials of the layer's image.
func (c *Client) Mount(ctx context.Context, mountpoint string, labels map[string]string) error {
	if h := c.hostFor(ctx, mountpoint); h != c.own {
		// A retired host had this mountpoint, and its check failed:
		// it stops serving it before the own host mounts there.
		if err := h.call(ctx, http.MethodPost, pathUnmount, c.opts.CallTimeout, MountpointRequest{mountpoint}, nil); err != nil {
			log.G(ctx).WithError(err).WithField("host_id", h.id).Warn("older FUSE host could not unmount a layer it no longer serves")
		}
		c.unroute(mountpoint)
	}
	ns, _ := namespaces.Namespace(ctx)
	req := MountRequest{Mountpoint: mountpoint, Labels: labels, LocalOnly: mountctx.LocalOnly(ctx), Namespace: ns, Creds: c.creds(ctx, labels)}
	timeout := c.opts.MountTimeout + mountTimeoutMargin
	return c.onOwn(ctx, func(h *conn) error {
		return h.call(ctx, http.MethodPost, pathMount, timeout, req, nil)
	})
}

// creds are the credentials for the registry host of the layer's image, if
// any are known.
func (c *Client) creds(ctx context.Context, labels map[string]string) []Credential {
	if c.opts.Credentials == nil {
		return nil
	}
	named, err := distribution.ParseDockerRef(labels[imageRefLabel])
	if err != nil {
		return nil // the host refuses such labels itself
	}
	host := distribution.Domain(named)
	user, secret, err := c.opts.Credentials(host)
	if err != nil {
		log.G(ctx).WithError(err).WithField("host", host).Warn("registry credentials not sent to the FUSE host")
		return nil
	}
	if user == "" && secret == "" {
		return nil
	}
	return []Credential{{Host: host, Username: user, Secret: secret}}
}

// Check asks the host serving mountpoint whether the layer is still served.
func (c *Client) Check(ctx context.Context, mountpoint string, labels map[string]string) error {
	req := CheckRequest{Mountpoint: mountpoint, Labels: labels}
	return c.routed(ctx, mountpoint, pathCheck, req, false)
}

// Unmount asks the host serving mountpoint to stop serving it.
func (c *Client) Unmount(ctx context.Context, mountpoint string) error {
	return c.routed(ctx, mountpoint, pathUnmount, MountpointRequest{mountpoint}, true)
}

// Release tells the host that served mountpoint that its snapshot is gone.
func (c *Client) Release(ctx context.Context, mountpoint string) error {
	return c.routed(ctx, mountpoint, pathRelease, MountpointRequest{mountpoint}, true)
}

// routed sends a call about mountpoint to the host serving it. A retired
// host that no longer answers is forgotten: the call then goes to the own
// host (a check fails there, an unmount detaches what is left).
func (c *Client) routed(ctx context.Context, mountpoint, path string, req any, ends bool) error {
	if h := c.hostFor(ctx, mountpoint); h != c.own {
		err := h.call(ctx, http.MethodPost, path, c.opts.CallTimeout, req, nil)
		if !unreachable(err) {
			if ends && err == nil {
				c.unroute(mountpoint)
			}
			return err
		}
		c.drop(ctx, h, err)
	}
	return c.onOwn(ctx, func(h *conn) error {
		return h.call(ctx, http.MethodPost, path, c.opts.CallTimeout, req, nil)
	})
}

// Close closes idle connections; the hosts keep running.
func (c *Client) Close() error {
	c.own.http.CloseIdleConnections()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range c.others {
		o.http.CloseIdleConnections()
	}
	return nil
}
