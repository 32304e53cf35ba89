package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse checks that Parse never panics and that every configuration it
// accepts survives Encode and Parse unchanged.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"sample.toml", "default.toml", "upstream/full.toml", "upstream/parallel.toml", "upstream/legacy.toml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, seed := range []string{
		"",
		"max_concurrency = -1\n",
		"[blob]\ncheck_always = true\n",
		"[pull_modes.parallel_pull_unpack]\nconcurrent_download_chunk_size = '1.5mb'\n",
		"[[resolver.host.'a'.mirrors]]\nhost = 'b'\n",
		"[resolver.host.'']\nmirrors = []\n",
		"mount_timeout_sec = '30'\n",
		"a = = 1\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := cfg.Encode(&buf); err != nil {
			t.Fatalf("Encode: %v", err)
		}
		again, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("Parse(Encode(cfg)): %v\n%s", err, buf.Bytes())
		}
		if !reflect.DeepEqual(again, cfg) {
			t.Fatalf("round trip changed the config:\n got %+v\nwant %+v", again, cfg)
		}
	})
}
