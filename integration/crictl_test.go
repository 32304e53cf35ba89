package integration

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
	"github.com/fastsoci/soci-snapshotter/integration/sociimage"
)

// The crictl tests drive containerd's CRI plugin with the real CRI client,
// crictl, as kubelet would over the same API (no kubelet runs here). Pods
// use host networking, so no CNI plugin or configuration is needed, and
// the pinned sandbox image is a one-layer image whose entrypoint is
// `probe pause`, pushed to the test registry (nothing from the internet).

// criEnv is a registry, our daemon and containerd with its CRI plugin, and
// crictl pointed at containerd for both services.
type criEnv struct {
	*harness.Env
	crictl *harness.Crictl
	dir    string
	pods   int
	podIDs []string // every pod sandbox run, removed at the end
}

// startCRIEnv starts the environment; opts.SandboxImage is set here.
func startCRIEnv(t *testing.T, ctx context.Context, daemonConfig func(dir string) string, opts harness.ContainerdOptions) *criEnv {
	t.Helper()
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	crictlBin := filepath.Join(tools.Bin, "crictl")
	if _, err := os.Stat(crictlBin); err != nil {
		t.Fatalf("crictl is missing (run `make deps`): %v", err)
	}
	dir := t.TempDir()
	e := &harness.Env{Dir: dir, Tools: tools, Namespace: "k8s.io"} // CRI's namespace
	t.Cleanup(func() {
		if t.Failed() && e.Registry != nil && e.Daemon != nil && e.Containerd != nil {
			dumpLogs(t, e)
		}
		if err := e.Close(); err != nil {
			t.Errorf("stop environment: %v", err)
		}
	})
	for _, sub := range []string{"registry", "daemon", "containerd", "nerdctl", "crictl", "pods"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if e.Registry, err = harness.StartRegistry(ctx, filepath.Join(tools.Bin, "registry"), filepath.Join(dir, "registry")); err != nil {
		t.Fatal(err)
	}
	opts.CRI = true
	opts.SandboxImage = pushImage(t, e.Registry.Host, "pause:1", image.Spec{
		Layers: []image.Layer{{Entries: []image.Entry{
			{Name: "pause", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary},
		}}},
		Entrypoint: []string{"/pause", "pause"},
	})
	if e.Daemon, err = harness.NewDaemon(filepath.Join(tools.Ours, "soci-snapshotter-grpc"), filepath.Join(dir, "daemon"),
		daemonConfig(dir)); err != nil {
		t.Fatal(err)
	}
	e.Daemon.Env = []string{"DOCKER_CONFIG=" + t.TempDir()} // empty: no credentials there
	if err := e.Daemon.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Containerd, err = harness.StartContainerdWith(ctx, tools.Bin, filepath.Join(dir, "containerd"), e.Daemon.Address, opts); err != nil {
		t.Fatal(err)
	}
	c := &criEnv{Env: e, dir: dir}
	if c.crictl, err = harness.NewCrictl(crictlBin, filepath.Join(dir, "crictl"), e.Containerd.Address, e.Containerd.Address); err != nil {
		t.Fatal(err)
	}
	// Before containerd stops (cleanups run last-in first-out): a sandbox
	// process outlives its shim, which the environment's Close kills.
	t.Cleanup(func() { c.removePods(t) })
	// containerd's CRI plugin may still be starting.
	c.poll(t, 30*time.Second, "CRI plugin answers", func() (bool, string) {
		out, err := c.crictl.Run(ctx, "images")
		return err == nil, fmt.Sprint(out, err)
	})
	return c
}

// poll waits until cond holds, failing the test after d.
func (c *criEnv) poll(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, d, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func writeJSON(t *testing.T, path string, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// podConfig writes a host-network pod sandbox config; annotations may name
// containerd's runtime handler annotation for pulls.
func (c *criEnv) podConfig(t *testing.T, annotations map[string]string) (path, logDir string) {
	t.Helper()
	c.pods++
	name := fmt.Sprintf("pod%d", c.pods)
	logDir = filepath.Join(c.dir, "pods", name)
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": name + "-uid", "attempt": 0},
		"log_directory": logDir,
		"annotations":   annotations,
		// NODE (2): the host's network namespace, so no CNI is needed.
		"linux": map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	}
	return writeJSON(t, filepath.Join(c.dir, "pods", name+".json"), cfg), logDir
}

// runPod runs a pod sandbox (runtime handler "" is the default) and returns
// its ID and its config file.
func (c *criEnv) runPod(t *testing.T, ctx context.Context, handler string) (id, cfg string) {
	t.Helper()
	cfg, _ = c.podConfig(t, nil)
	args := []string{"runp"}
	if handler != "" {
		args = append(args, "--runtime", handler)
	}
	id, err := c.crictl.Run(ctx, append(args, cfg)...)
	if err != nil {
		t.Fatal(err)
	}
	c.podIDs = append(c.podIDs, id)
	out, err := c.crictl.Run(ctx, "inspectp", "-o", "go-template", "--template", "{{.status.state}}", id)
	if err != nil || out != "SANDBOX_READY" {
		t.Fatalf("pod %s: state %q, %v", id, out, err)
	}
	return id, cfg
}

// removePods removes every pod sandbox run by the test, then kills any
// process still in a sandbox's cgroup (containerd gone, say).
func (c *criEnv) removePods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, id := range c.podIDs {
		if _, err := c.crictl.Run(ctx, "rmp", "--force", id); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Logf("remove pod %s: %v", id, err)
		}
	}
	harness.KillCgroupMembers(c.podIDs)
}

// runSums creates and starts a container of ref in pod running
// `probe sha256 paths...`, waits for it to exit 0 and returns its log.
func (c *criEnv) runSums(t *testing.T, ctx context.Context, pod, podCfg, ref string, paths []string) string {
	t.Helper()
	name := fmt.Sprintf("sums%d", time.Now().UnixNano())
	ctrCfg := writeJSON(t, filepath.Join(c.dir, "pods", name+".json"), map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": ref},
		"command":  append([]string{"/bin/probe", "sha256"}, paths...),
		"log_path": name + ".log",
		"linux":    map[string]any{},
	})
	id, err := c.crictl.Run(ctx, "create", pod, ctrCfg, podCfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.crictl.Run(ctx, "start", id); err != nil {
		t.Fatal(err)
	}
	c.poll(t, 30*time.Second, "container "+id+" exits", func() (bool, string) {
		out, err := c.crictl.Run(ctx, "inspect", "-o", "json", id)
		if err != nil {
			return false, err.Error()
		}
		var st struct {
			Status struct {
				State    string `json:"state"`
				ExitCode int    `json:"exitCode"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, err.Error()
		}
		if st.Status.State == "CONTAINER_EXITED" && st.Status.ExitCode != 0 {
			logs, _ := c.crictl.Run(ctx, "logs", id)
			t.Fatalf("container %s exited with %d: %s", id, st.Status.ExitCode, logs)
		}
		return st.Status.State == "CONTAINER_EXITED", st.Status.State
	})
	logs, err := c.crictl.Run(ctx, "logs", id)
	if err != nil {
		t.Fatal(err)
	}
	return logs
}

// sociSnapshots counts the snapshots containerd keeps in "soci".
func (c *criEnv) sociSnapshots(t *testing.T, ctx context.Context) int {
	t.Helper()
	out, err := c.Ctr(ctx, "snapshots", "--snapshotter", "soci", "ls")
	if err != nil {
		t.Fatal(err)
	}
	return len(snapshotRows(out))
}

// twoLayerImage is a probe layer and a data layer of its own (seeded), so
// that its layers are not shared with newLayeredImage's.
func twoLayerImage(seed int64) layeredImage {
	data := randomBytes(seed, 2<<20+777)
	note := []byte(fmt.Sprintf("image %d\n", seed))
	img := layeredImage{
		spec: image.Spec{
			Layers: []image.Layer{
				{Entries: []image.Entry{dir("bin"),
					{Name: "bin/probe", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Data: probeBinary}}},
				{Entries: []image.Entry{dir("data"), file("data/x.bin", data), file("data/note.txt", note)}},
			},
			Entrypoint: []string{"/bin/probe"},
		},
		want: map[string]string{},
	}
	for p, d := range map[string][]byte{"/data/x.bin": data, "/data/note.txt": note} {
		sum := sha256.Sum256(d)
		img.paths = append(img.paths, p)
		img.want[p] = p + " " + hex.EncodeToString(sum[:])
	}
	return img
}

// TestCrictl: containerd's CRI plugin configured with "soci" as its
// snapshotter and the snapshot annotations on, driven by crictl. A pull is
// lazy (FUSE mounts under the daemon's root, no layer unpacked); a pod
// sandbox and a container reading the image's files run; kubelet's form
// of a credentialed pull — crictl's image endpoint at our daemon's CRI
// proxy ([cri_keychain]), --creds against an htpasswd registry — is lazy
// and the files read later are fetched with the captured credentials; and
// removing the images (rmi, rmi --prune) frees our snapshots, unmounts the
// layers and drops their cached spans.
func TestCrictl(t *testing.T) {
	const user, password = "crictl-user", "pw-Kq83vNz0R"
	ctx := testContext(t, 3*time.Minute)
	c := startCRIEnv(t, ctx, func(dir string) string {
		return defaultDaemonConfig + fmt.Sprintf(`
[cri_keychain]
  enable_keychain = true
  image_service_path = %q
`, filepath.Join(dir, "containerd", "containerd.sock"))
	}, harness.ContainerdOptions{})

	img := newLayeredImage()
	builtA := buildImage(t, img.spec)
	refA := pushV2(t, c.Env, "crictl/a:1", builtA, sociimage.Options{SpanSize: 1 << 20})
	imgB := twoLayerImage(31)
	builtB := buildImage(t, imgB.spec)
	pushV2(t, c.Env, "crictl/b:1", builtB, sociimage.Options{SpanSize: 1 << 20})
	htpasswd := filepath.Join(c.dir, "authregistry", "htpasswd")
	if err := os.MkdirAll(filepath.Dir(htpasswd), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := harness.WriteHtpasswd(htpasswd, user, password); err != nil {
		t.Fatal(err)
	}
	authReg, err := harness.StartRegistryWith(ctx, filepath.Join(c.Tools.Bin, "registry"), filepath.Join(c.dir, "authregistry"),
		harness.RegistryOptions{Storage: c.Registry.Storage, Htpasswd: htpasswd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = authReg.Stop() })
	refB := authReg.Host + "/crictl/b:1"

	var pod, podCfg string
	t.Run("pull", func(t *testing.T) {
		if _, err := c.crictl.Run(ctx, "pull", refA); err != nil {
			t.Fatal(err)
		}
		if n := fuseLayers(t, c.Env); n != 3 {
			t.Errorf("want 3 lazily loaded layers mounted after crictl pull, got %d", n)
		}
		if out, err := c.crictl.Run(ctx, "images", "-q", refA); err != nil || out == "" {
			t.Errorf("crictl images %s: %q, %v", refA, out, err)
		}
	})
	t.Run("run", func(t *testing.T) {
		pod, podCfg = c.runPod(t, ctx, "")
		checkSums(t, c.runSums(t, ctx, pod, podCfg, refA, img.paths), img.want)
		// The sandbox image has no index: unpacked, not mounted.
		if n := fuseLayers(t, c.Env); n != 3 {
			t.Errorf("want 3 lazily loaded layers mounted after the run, got %d", n)
		}
	})
	t.Run("creds", func(t *testing.T) {
		if pod == "" {
			t.Skip("no pod")
		}
		// kubelet's --image-service-endpoint: our daemon's socket.
		viaDaemon, err := harness.NewCrictl(c.crictl.Bin, t.TempDir(), c.Containerd.Address, c.Daemon.Address)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := viaDaemon.Run(ctx, "pull", refB); err == nil {
			t.Fatal("crictl pull without credentials succeeded")
		}
		before := fuseLayers(t, c.Env)
		if _, err := viaDaemon.Run(ctx, "pull", "--creds", user+":"+password, refB); err != nil {
			t.Fatal(err)
		}
		if n := fuseLayers(t, c.Env) - before; n != 2 {
			t.Errorf("want 2 more lazily loaded layers after the credentialed pull, got %d", n)
		}
		// The spans are fetched now, by the FUSE host, which has no docker
		// config: only the credentials the proxy captured.
		checkSums(t, c.runSums(t, ctx, pod, podCfg, refB, imgB.paths), imgB.want)
		if logText := readLog(t, c.Daemon.Log()); strings.Contains(logText, password) {
			t.Error("the password shows up in the daemon's log")
		}
	})
	t.Run("rmi", func(t *testing.T) {
		if pod == "" {
			t.Skip("no pod")
		}
		if _, err := c.crictl.Run(ctx, "rmp", "--force", pod); err != nil {
			t.Fatal(err)
		}
		snapsBefore := c.sociSnapshots(t, ctx)
		if _, err := c.crictl.Run(ctx, "rmi", refA); err != nil {
			t.Fatal(err)
		}
		onlyA := layersOnlyIn(builtA, builtB)
		c.poll(t, 30*time.Second, "rmi frees image a", func() (bool, string) {
			if n := fuseLayers(t, c.Env); n != 2 {
				return false, fmt.Sprintf("%d lazily loaded layers mounted, want b's 2", n)
			}
			for _, d := range onlyA {
				if layerCached(c.Env, d) {
					return false, fmt.Sprintf("layer %s still cached", d)
				}
			}
			if n := c.sociSnapshots(t, ctx); n != snapsBefore-3 {
				return false, fmt.Sprintf("%d soci snapshots, want %d", n, snapsBefore-3)
			}
			return true, ""
		})
		// Only b is left unused: --prune removes it; the pinned sandbox
		// image stays.
		if _, err := c.crictl.Run(ctx, "rmi", "--prune"); err != nil {
			t.Fatal(err)
		}
		c.poll(t, 30*time.Second, "rmi --prune frees image b", func() (bool, string) {
			if n := fuseLayers(t, c.Env); n != 0 {
				return false, fmt.Sprintf("%d lazily loaded layers mounted", n)
			}
			for _, d := range layersOnlyIn(builtB, builtA) {
				if layerCached(c.Env, d) {
					return false, fmt.Sprintf("layer %s still cached", d)
				}
			}
			if n := c.sociSnapshots(t, ctx); n != 1 {
				return false, fmt.Sprintf("%d soci snapshots, want the sandbox image's 1", n)
			}
			return true, ""
		})
		if out, err := c.crictl.Run(ctx, "images", "-q"); err != nil || strings.Count(out, "sha256:") != 1 {
			t.Errorf("after pruning, crictl images: %q, %v (want the sandbox image only)", out, err)
		}
		if got := cacheBytes(t, c.Env); got != 0 {
			t.Errorf("span cache holds %d bytes after removing every lazily loaded image", got)
		}
	})
}

// layersOnlyIn lists the layer digests of a that b does not have.
func layersOnlyIn(a, b *image.Image) []digest.Digest {
	in := map[digest.Digest]bool{}
	for _, l := range b.Manifest.Layers {
		in[l.Digest] = true
	}
	var out []digest.Digest
	for _, l := range a.Manifest.Layers {
		if !in[l.Digest] {
			out = append(out, l.Digest)
		}
	}
	return out
}

// TestCrictlRuntimeHandler: the per-RuntimeClass form. containerd's CRI
// default snapshotter is overlayfs; a runtime handler "soci" (runc, with
// snapshotter "soci" for its containers and its pulls) selects ours. A pull
// for a pod of that handler is lazy and a pod run with it reads the files;
// a pull with no handler is unpacked by overlayfs.
func TestCrictlRuntimeHandler(t *testing.T) {
	ctx := testContext(t, 3*time.Minute)
	c := startCRIEnv(t, ctx, func(string) string { return defaultDaemonConfig }, harness.ContainerdOptions{
		CRISnapshotter: "overlayfs",
		Handlers:       map[string]string{"soci": "soci"},
	})
	img := newLayeredImage()
	ref := pushV2(t, c.Env, "crictl/handler:1", buildImage(t, img.spec), sociimage.Options{SpanSize: 1 << 20})
	plain := pushV2(t, c.Env, "crictl/plain:1", buildImage(t, twoLayerImage(32).spec), sociimage.Options{SpanSize: 1 << 20})

	// No handler: containerd's default snapshotter.
	if _, err := c.crictl.Run(ctx, "pull", plain); err != nil {
		t.Fatal(err)
	}
	if n := fuseLayers(t, c.Env); n != 0 {
		t.Errorf("a pull without runtime handler mounted %d layers lazily, want 0 (overlayfs)", n)
	}
	// crictl pull cannot set the PullImageRequest's runtime handler (kubelet
	// does with its RuntimeClassInImageCriApi feature); containerd also
	// reads it from the pod config's annotation.
	podForPull, _ := c.podConfig(t, map[string]string{"io.containerd.cri.runtime-handler": "soci"})
	if _, err := c.crictl.Run(ctx, "pull", "--pod-config", podForPull, ref); err != nil {
		t.Fatal(err)
	}
	if n := fuseLayers(t, c.Env); n != 3 {
		t.Errorf("want 3 lazily loaded layers mounted after the pull for handler soci, got %d", n)
	}
	pod, podCfg := c.runPod(t, ctx, "soci")
	checkSums(t, c.runSums(t, ctx, pod, podCfg, ref, img.paths), img.want)
	if n := fuseLayers(t, c.Env); n != 3 {
		t.Errorf("want 3 lazily loaded layers mounted after the run, got %d", n)
	}
}
