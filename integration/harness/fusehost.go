package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fastsoci/soci-snapshotter/fusehost"
)

// HostProcess is a running FUSE host (`soci-snapshotter-grpc fuse-host
// ...`) of one daemon root.
type HostProcess struct {
	Pid  int
	Exe  string // the executable, from /proc/PID/exe
	Args []string
}

// FuseHosts lists the FUSE host processes of root: those whose command
// line has the argument "fuse-host" and names a path under root.
func FuseHosts(root string) ([]HostProcess, error) {
	var hosts []HostProcess
	for pid, args := range processArgs() {
		isHost, ofRoot := false, false
		for _, a := range args[1:] {
			isHost = isHost || a == "fuse-host"
			ofRoot = ofRoot || strings.Contains(a, root)
		}
		if !isHost || !ofRoot {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
		hosts = append(hosts, HostProcess{Pid: pid, Exe: strings.TrimSuffix(exe, " (deleted)"), Args: args})
	}
	slices.SortFunc(hosts, func(a, b HostProcess) int { return a.Pid - b.Pid })
	return hosts, nil
}

// KillFuseHosts sends SIGKILL to every FUSE host of root and returns the
// ones it found: the last resort of a test's teardown.
func KillFuseHosts(root string) ([]HostProcess, error) {
	hosts, err := FuseHosts(root)
	for _, h := range hosts {
		_ = syscall.Kill(h.Pid, syscall.SIGKILL)
	}
	return hosts, err
}

// HostSockets lists the sockets of root's FUSE hosts.
func HostSockets(root string) ([]string, error) {
	return filepath.Glob(filepath.Join(fusehost.SocketDir(root), "*.sock"))
}

// HostHealth is a FUSE host's answer to GET /health, and the answer as
// it came.
type HostHealth struct {
	fusehost.Health
	Raw string
}

// GetHostHealth asks the FUSE host on the unix socket sock for GET /health.
func GetHostHealth(ctx context.Context, sock string) (HostHealth, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://fuse-host/health", nil)
	if err != nil {
		return HostHealth{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return HostHealth{}, fmt.Errorf("GET /health on %s: %w", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return HostHealth{}, fmt.Errorf("GET /health on %s: %w", sock, err)
	}
	h := HostHealth{Raw: string(body)}
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("GET /health on %s: %s: %.200s", sock, resp.Status, body)
	}
	if err := json.Unmarshal(body, &h.Health); err != nil {
		return h, fmt.Errorf("GET /health on %s: %w: %.200s", sock, err, body)
	}
	return h, nil
}
