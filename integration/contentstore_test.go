package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/integration/harness"
)

// TestContentStoreContainerd: `soci create` builds an index into
// containerd's content store and nothing is pushed; the image is pulled for
// the soci snapshotter with that index named (nerdctl pull
// --soci-index-digest, as the reference's flow) and run. With
// [content_store] type = "containerd" the FUSE host reads the index and
// zTOCs from containerd's content store: every layer is lazily loaded and
// the registry is never asked for the index. With type = "soci" (the
// default) the daemon asks the registry, which has no such index, and the
// image is unpacked normally.
func TestContentStoreContainerd(t *testing.T) {
	img := newLayeredImage()
	for _, tc := range []struct {
		typ      string
		wantLazy int
	}{{"containerd", 3}, {"soci", 0}} {
		t.Run(tc.typ, func(t *testing.T) {
			dir := t.TempDir()
			cfg := defaultDaemonConfig + fmt.Sprintf("\n[content_store]\n  type = %q\n  containerd_address = %q\n",
				tc.typ, "unix://"+filepath.Join(dir, "containerd", "containerd.sock"))
			e := startEnvIn(t, dir, cfg, harness.StartDaemon)
			ctx := testContext(t, 6*time.Minute)
			ref := pushImage(t, e.Registry.Host, "cstore/plain:latest", img.spec)
			nerdctl(t, ctx, e, "pull", "-q", ref)
			sociCLI(t, ctx, e, "create", "--span-size", "1048576", "--min-layer-size", "0", ref)
			digests := strings.Fields(sociCLI(t, ctx, e, "index", "list", "-q", "--ref", ref))
			if len(digests) != 1 {
				t.Fatalf("want one local index of %s, got %q", ref, digests)
			}
			index := digests[0]
			nerdctl(t, ctx, e, "--snapshotter", "soci", "pull", "-q", "--soci-index-digest", index, ref)
			checkLazyRun(t, ctx, e, ref, img, tc.wantLazy)

			access, err := os.ReadFile(e.Registry.Log())
			if err != nil {
				t.Fatal(err)
			}
			asked := strings.Contains(string(access), "/manifests/"+index)
			switch {
			case tc.typ == "containerd" && asked:
				t.Errorf("the registry was asked for index %s, which containerd's content store holds", index)
			case tc.typ == "soci" && !asked:
				t.Errorf("the registry was never asked for index %s: the daemon did not look it up", index)
			}
		})
	}
}
