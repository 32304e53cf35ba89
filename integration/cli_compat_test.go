package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
	"github.com/fastsoci/soci-snapshotter/integration/image"
)

// The reference CLI's flags and commands beyond what nerdctl uses: TLS
// files, --http-dump/--http-trace, --max-concurrent-uploads, prefetch
// artifacts, rebuild-db and the standalone convert.

// sociRun runs our soci with stdout and stderr apart.
func sociRun(ctx context.Context, e *harness.Env, args ...string) (string, string, error) {
	base := []string{"--address", e.Containerd.Address, "--namespace", e.Namespace, "--root", filepath.Join(e.Dir, "soci-cli")}
	cmd := exec.CommandContext(ctx, filepath.Join(e.Tools.Ours, "soci"), append(base, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// pulledCLIImage pushes the layered image to the env's registry, pulls it
// into containerd and tags it as each of dsts.
func pulledCLIImage(t *testing.T, ctx context.Context, e *harness.Env, name string, dsts ...string) layeredImage {
	t.Helper()
	img := newLayeredImage()
	src := pushImage(t, e.Registry.Host, name, img.spec)
	nerdctl(t, ctx, e, "pull", "-q", src)
	for _, d := range dsts {
		nerdctl(t, ctx, e, "tag", src, d)
	}
	return img
}

// TestCLIPushTLS: push to a registry that serves HTTPS with a private CA
// and requires a client certificate. Each of --tlscacert and
// --tlscert/--tlskey is needed; with all of them the index arrives, and
// --http-dump/--http-trace show the exchange on stderr.
// tlsRefusal matches how a push refused at the TLS layer fails: with TLS 1.3
// a server that requires a client certificate rejects it after the
// handshake, which the HTTP/2 transport may report only as a connection it
// could not establish.
var tlsRefusal = regexp.MustCompile(`certificate|tls: |handshake|http2: client conn could not be established`)

func TestCLIPushTLS(t *testing.T) {
	e := cliEnv(t)
	ctx := testContext(t, 5*time.Minute)
	pki, err := harness.NewTestPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := harness.StartTLSRegistry(ctx, filepath.Join(e.Tools.Bin, "registry"), t.TempDir(), "", pki)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop() })
	dst := reg.Host + "/cli/tls:latest"
	pulledCLIImage(t, ctx, e, "cli/tls-src:latest", dst)
	sociCLI(t, ctx, e, "create", "--span-size", "2097152", "--min-layer-size", "0", dst)

	for name, flags := range map[string][]string{
		"no CA":          {"--tlscert", pki.ClientCert, "--tlskey", pki.ClientKey},
		"no client cert": {"--tlscacert", pki.CA},
	} {
		if _, stderr, err := sociRun(ctx, e, append(append([]string{"push"}, flags...), dst)...); err == nil {
			t.Errorf("push with %s succeeded", name)
		} else if !tlsRefusal.MatchString(stderr) {
			t.Errorf("push with %s: want a TLS or certificate error, got %q", name, stderr)
		}
	}
	stdout, stderr, err := sociRun(ctx, e, "push", "--tlscacert", pki.CA, "--tlscert", pki.ClientCert, "--tlskey", pki.ClientKey,
		"--http-dump", "--http-trace", dst)
	if err != nil {
		t.Fatalf("push with CA and client certificate: %v\n%s", err, stderr)
	}
	idx := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q", "--ref", dst))
	for _, want := range []string{"pushing soci index with digest: " + idx, "successfully pushed artifact with digest: " + idx} {
		if !strings.Contains(stdout, want+"\n") {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	for _, want := range []string{"> PUT https://" + reg.Host + "/v2/cli/tls/manifests/" + idx, " 201 Created\n",
		"http-trace: ", "TLS handshake done"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr (dump and trace) lacks %q:\n%.3000s", want, stderr)
		}
	}
	if strings.Contains(stdout, "http-trace") || strings.Contains(stdout, "> PUT") {
		t.Errorf("dump or trace went to stdout:\n%s", stdout)
	}
	clientTLS, err := pki.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, "https://"+reg.Host+"/v2/cli/tls/manifests/"+idx, nil)
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the TLS registry has no SOCI index %s: %s", idx, resp.Status)
	}
}

// inflightProxy forwards to a registry and records the most requests it
// had in flight at once. To make overlap observable, each request waits
// (at most hold) for a second one to be in flight.
type inflightProxy struct {
	next http.Handler
	hold time.Duration

	mu       sync.Mutex
	cur, max int
	arrived  chan struct{}
}

func (p *inflightProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.cur++
	p.max = max(p.max, p.cur)
	cur := p.cur
	p.mu.Unlock()
	if cur >= 2 {
		select {
		case p.arrived <- struct{}{}:
		default:
		}
	} else {
		select {
		case <-p.arrived:
		case <-time.After(p.hold):
		}
	}
	p.next.ServeHTTP(w, r)
	p.mu.Lock()
	p.cur--
	p.mu.Unlock()
}

func (p *inflightProxy) reset() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.max
	p.max = 0
	return m
}

// TestCLIPushMaxConcurrentUploads: with --max-concurrent-uploads=1 the
// registry never sees two requests at once; with the default (3) it does.
// --quiet prints only the index digest.
func TestCLIPushMaxConcurrentUploads(t *testing.T) {
	e := cliEnv(t)
	ctx := testContext(t, 5*time.Minute)
	target, _ := url.Parse("http://" + e.Registry.Host)
	proxy := &inflightProxy{next: httputil.NewSingleHostReverseProxy(target), hold: 300 * time.Millisecond, arrived: make(chan struct{}, 1)}
	srv := httptest.NewServer(proxy)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	one, def := host+"/cli/one:latest", host+"/cli/default:latest"
	pulledCLIImage(t, ctx, e, "cli/conc-src:latest", one, def)
	for _, ref := range []string{one, def} {
		sociCLI(t, ctx, e, "create", "--span-size", "2097152", "--min-layer-size", "0", ref)
	}
	proxy.reset()
	out := sociCLI(t, ctx, e, "push", "--max-concurrent-uploads", "1", "-q", one)
	if got := proxy.reset(); got != 1 {
		t.Errorf("--max-concurrent-uploads=1: %d requests in flight at once", got)
	}
	if d, err := digest.Parse(strings.TrimSpace(out)); err != nil {
		t.Errorf("push -q printed %q, want one digest (%v)", out, err)
	} else if idx := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q", "--ref", one)); idx != d.String() {
		t.Errorf("push -q printed %s, the local index is %s", d, idx)
	}
	sociCLI(t, ctx, e, "push", def)
	if got := proxy.reset(); got < 2 || got > 3 {
		t.Errorf("default --max-concurrent-uploads (3): %d requests in flight at most, want 2 or 3", got)
	}
	if _, _, err := sociRun(ctx, e, "push", "--max-concurrent-uploads", "-1", one); err == nil {
		t.Error("--max-concurrent-uploads=-1 accepted")
	}
}

type prefetchRow struct {
	Digest      string
	LayerDigest string
	TotalSpans  int
	CreatedAt   time.Time
}

func prefetchRows(t *testing.T, ctx context.Context, e *harness.Env) []prefetchRow {
	t.Helper()
	var rows []prefetchRow
	if err := json.Unmarshal([]byte(sociCLI(t, ctx, e, "prefetch", "ls", "--json")), &rows); err != nil {
		t.Fatalf("prefetch ls --json: %v", err)
	}
	return rows
}

// TestCLIPrefetchArtifacts: --prefetch-file (a path in the image) and
// --prefetch-files-json give one prefetch artifact per layer holding such
// a path, listed in the SOCI index and by prefetch ls/info; convert builds
// them into the v2 index too.
func TestCLIPrefetchArtifacts(t *testing.T) {
	e := cliEnv(t)
	ctx := testContext(t, 5*time.Minute)
	ref := e.Registry.Host + "/cli/prefetch:latest"
	img := pulledCLIImage(t, ctx, e, "cli/prefetch-src:latest", ref)
	list := filepath.Join(t.TempDir(), "prefetch.json")
	if err := os.WriteFile(list, []byte(`["/data/c.txt"]`), 0o644); err != nil {
		t.Fatal(err)
	}
	sociCLI(t, ctx, e, "create", "--span-size", "1048576", "--min-layer-size", "0",
		"--prefetch-file", "/data/b.bin", "--prefetch-files-json", list, ref)
	layers := buildImage(t, img.spec).LayerDescs
	rows := prefetchRows(t, ctx, e)
	byLayer := map[string]prefetchRow{}
	for _, r := range rows {
		byLayer[r.LayerDigest] = r
	}
	// data/b.bin (3 MiB and a bit) is in layer 2, data/c.txt in layer 3.
	if len(rows) != 2 || byLayer[layers[1].Digest.String()].TotalSpans < 4 || byLayer[layers[2].Digest.String()].TotalSpans != 1 {
		t.Fatalf("prefetch ls: %+v; want layer 2 with >= 4 spans and layer 3 with 1", rows)
	}
	table := sociCLI(t, ctx, e, "prefetch", "ls")
	if !strings.HasPrefix(table, "DIGEST ") || !strings.Contains(table, "LAYER DIGEST") || strings.Count(table, "\n") != 3 {
		t.Errorf("prefetch ls:\n%s", table)
	}
	r := byLayer[layers[2].Digest.String()]
	info := sociCLI(t, ctx, e, "prefetch", "info", "--json", r.Digest)
	for _, want := range []string{"Digest:        " + r.Digest, "Layer Digest:  " + r.LayerDigest, "Total spans to prefetch: 1", `"prefetch_spans"`} {
		if !strings.Contains(info, want) {
			t.Errorf("prefetch info lacks %q:\n%s", want, info)
		}
	}
	idx := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q", "--ref", ref))
	if n := strings.Count(sociCLI(t, ctx, e, "index", "info", idx), prefetchMediaType); n != 2 {
		t.Errorf("SOCI index lists %d prefetch artifacts, want 2", n)
	}
	if _, _, err := sociRun(ctx, e, "prefetch", "info", idx); err == nil {
		t.Error("prefetch info of a SOCI index succeeded")
	}

	// convert builds them into the v2 index.
	dst := e.Registry.Host + "/cli/prefetch:soci"
	sociCLI(t, ctx, e, "convert", "--span-size", "1048576", "--min-layer-size", "0", "--prefetch-file", "data/c.txt", ref, dst)
	found := false
	for _, m := range imageIndex(t, ctx, e, dst).Manifests {
		if m.ArtifactType == "application/vnd.amazon.soci.index.v2+json" {
			found = strings.Count(sociCLI(t, ctx, e, "index", "info", m.Digest.String()), prefetchMediaType) == 1
		}
	}
	if !found {
		t.Error("converted image's SOCI index has no prefetch artifact")
	}
}

const prefetchMediaType = "application/vnd.amazon.soci.prefetch.v1+json"

// TestCLIRebuildDB: after the artifact database is lost, rebuild-db finds
// the SOCI v1 index in containerd's content store again, with its zTOCs
// and prefetch artifact.
func TestCLIRebuildDB(t *testing.T) {
	e := cliEnv(t)
	ctx := testContext(t, 5*time.Minute)
	ref := e.Registry.Host + "/cli/rebuild:latest"
	pulledCLIImage(t, ctx, e, "cli/rebuild-src:latest", ref)
	sociCLI(t, ctx, e, "create", "--span-size", "2097152", "--min-layer-size", "0", "--prefetch-file", "/data/c.txt", ref)
	idx := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q", "--ref", ref))
	ztocs := strings.Fields(sociCLI(t, ctx, e, "ztoc", "list", "-q"))
	if idx == "" || len(ztocs) != 3 {
		t.Fatalf("after create: index %q, zTOCs %q", idx, ztocs)
	}
	db := filepath.Join(e.Dir, "soci-cli", "artifacts.db")
	if err := os.Remove(db); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q")); got != "" {
		t.Fatalf("index list without a database: %q", got)
	}
	sociCLI(t, ctx, e, "rebuild-db")
	if got := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q", "--ref", ref)); got != idx {
		t.Errorf("after rebuild-db: index %q, want %s", got, idx)
	}
	if got := strings.Fields(sociCLI(t, ctx, e, "ztoc", "list", "-q")); len(got) != 3 {
		t.Errorf("after rebuild-db: zTOCs %q, want 3", got)
	}
	if rows := prefetchRows(t, ctx, e); len(rows) != 1 || rows[0].TotalSpans != 1 {
		t.Errorf("after rebuild-db: prefetch artifacts %+v, want 1", rows)
	}
	// Removing the index's content and rebuilding drops its entry.
	if _, err := e.Ctr(ctx, "content", "rm", idx); err != nil {
		t.Fatal(err)
	}
	sociCLI(t, ctx, e, "rebuild-db")
	if got := strings.TrimSpace(sociCLI(t, ctx, e, "index", "list", "-q")); got != "" {
		t.Errorf("after removing the index blob and rebuild-db: %q", got)
	}
}

// writeLayout writes img as an OCI image layout (index.json naming a
// one-platform manifest list, as nerdctl save does) to dir.
func writeLayout(t *testing.T, dir string, img *image.Image) {
	t.Helper()
	put := func(d digest.Digest, data []byte) {
		p := filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded())
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put(img.Manifest.Config.Digest, img.ConfigBytes)
	for i, l := range img.Layers {
		put(img.LayerDescs[i].Digest, l)
	}
	put(img.ManifestDesc.Digest, img.ManifestBytes)
	list, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{img.ManifestDesc}})
	put(digest.FromBytes(list), list)
	top, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(list), Size: int64(len(list))}}})
	os.WriteFile(filepath.Join(dir, "index.json"), top, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// checkConvertedLayout checks the v2 shape of a converted layout: every
// blob matches its digest; index.json names one image index with the
// annotated manifest and the SOCI index, which lists wantZtocs zTOCs.
func checkConvertedLayout(t *testing.T, dir string, wantZtocs int) {
	t.Helper()
	read := func(d digest.Digest, v any) {
		data, err := os.ReadFile(filepath.Join(dir, "blobs", d.Algorithm().String(), d.Encoded()))
		if err != nil || digest.FromBytes(data) != d {
			t.Fatalf("blob %s: %v (or digest mismatch)", d, err)
		}
		if err := json.Unmarshal(data, v); err != nil {
			t.Fatalf("blob %s: %v", d, err)
		}
	}
	var top, idx ocispec.Index
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil || json.Unmarshal(data, &top) != nil || len(top.Manifests) != 1 {
		t.Fatalf("index.json: %s %v", data, err)
	}
	read(top.Manifests[0].Digest, &idx)
	var sociEntry, annotated ocispec.Descriptor
	for _, m := range idx.Manifests {
		if m.ArtifactType == "application/vnd.amazon.soci.index.v2+json" {
			sociEntry = m
		} else if m.Annotations["com.amazon.soci.index-digest"] != "" {
			annotated = m
		}
	}
	if sociEntry.Digest == "" || annotated.Annotations["com.amazon.soci.index-digest"] != sociEntry.Digest.String() ||
		sociEntry.Annotations["com.amazon.soci.image-manifest-digest"] != annotated.Digest.String() {
		t.Fatalf("converted index lacks the annotated manifest / SOCI index pair: %+v", idx.Manifests)
	}
	var sm ocispec.Manifest
	read(sociEntry.Digest, &sm)
	if len(sm.Layers) != wantZtocs {
		t.Errorf("SOCI index has %d zTOCs, want %d", len(sm.Layers), wantZtocs)
	}
	for _, l := range sm.Layers {
		if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", l.Digest.Encoded())); err != nil {
			t.Errorf("zTOC %s missing", l.Digest)
		}
	}
}

// TestCLIConvertStandalone: convert --standalone with no containerd (the
// address points nowhere) turns an OCI layout into a SOCI v2 layout, as a
// directory and as a tar; the directory, copied to a registry, runs
// lazily in a fresh containerd.
func TestCLIConvertStandalone(t *testing.T) {
	tools, err := harness.ToolsFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 6*time.Minute)
	img := newLayeredImage()
	in := t.TempDir()
	writeLayout(t, in, buildImage(t, img.spec))
	outDir := filepath.Join(t.TempDir(), "converted")
	outTar := filepath.Join(t.TempDir(), "converted.tar")
	soci := filepath.Join(tools.Ours, "soci")
	for _, args := range [][]string{
		{"--format", "oci-dir", in, outDir},
		{in, outTar}, // oci-archive is the default
	} {
		cmd := exec.CommandContext(ctx, soci, append([]string{"--address", "/nonexistent/containerd.sock", "--root", filepath.Join(t.TempDir(), "unused"),
			"convert", "--standalone", "--span-size", "2097152", "--min-layer-size", "0"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("soci convert --standalone %v: %v\n%s", args, err, out)
		}
	}
	checkConvertedLayout(t, outDir, 3)
	unpacked := t.TempDir()
	if out, err := exec.CommandContext(ctx, "tar", "-xf", outTar, "-C", unpacked).CombinedOutput(); err != nil {
		t.Fatalf("untar: %v %s", err, out)
	}
	checkConvertedLayout(t, unpacked, 3)

	fresh := startEnv(t, defaultDaemonConfig)
	ref := fresh.Registry.Host + "/cli/standalone:latest"
	src, err := oci.NewWithContext(ctx, outDir)
	if err != nil {
		t.Fatal(err)
	}
	var top ocispec.Index
	data, _ := os.ReadFile(filepath.Join(outDir, "index.json"))
	json.Unmarshal(data, &top)
	if err := src.Tag(ctx, top.Manifests[0], "latest"); err != nil {
		t.Fatal(err)
	}
	repo, err := remote.NewRepository(ref)
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	if _, err := oras.Copy(ctx, src, "latest", repo, "latest", oras.DefaultCopyOptions); err != nil {
		t.Fatalf("copy the converted layout to %s: %v", ref, err)
	}
	checkLazyRun(t, ctx, fresh, ref, img, 3)
}
