package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fastsoci/soci-snapshotter/fusehost"
	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// ProfileDaemonConfig (top-level keys: it goes first) makes every FUSE host serve pprof on its socket (and
// the daemon on a loopback port of its choosing), for Config.ProfileDir.
const ProfileDaemonConfig = `
debug_address = "127.0.0.1:0"
`

// dumpHostProfiles writes the heap profile of each FUSE host of d (binary,
// and as text with runtime.MemStats) into dir, named after the run, once
// the run is over: in-use memory then, allocations over the host's life.
func dumpHostProfiles(ctx context.Context, dir, run string, d *harness.Daemon) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create profile dir: %w", err)
	}
	socks, err := filepath.Glob(filepath.Join(fusehost.SocketDir(d.Root), "*.sock"))
	if err != nil {
		return err
	}
	for _, sock := range socks {
		id := strings.TrimSuffix(filepath.Base(sock), ".sock")
		c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
		for suffix, query := range map[string]string{".heap.pb.gz": "", ".heap.txt": "?debug=1"} {
			if err := fetchTo(ctx, c, "http://host/debug/pprof/heap"+query, filepath.Join(dir, run+"-host-"+id+suffix)); err != nil {
				return fmt.Errorf("heap profile of FUSE host %s: %w", id, err)
			}
		}
	}
	return nil
}

func fetchTo(ctx context.Context, c *http.Client, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
