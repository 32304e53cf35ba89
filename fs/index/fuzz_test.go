package index

import (
	"io"
	"strings"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc"
	"github.com/awslabs/soci-snapshotter/ztoc/compression"

	"github.com/fastsoci/soci-snapshotter/fs/layer"
)

// FuzzConvert mutates real zTOCs (gzip and tar) and runs them through the
// bounded decoder and Convert, which must never panic, and must only accept
// what the rest of the daemon can rely on. The C checkpoint code is not
// called here: it is only reached after Convert accepted the checkpoints.
func FuzzConvert(f *testing.F) {
	small := buildTar(f, testEntries(1<<10))
	_, plain := buildZTOC(f, small, 64<<10, compression.Uncompressed)
	f.Add(plain)
	f.Add(v1SingleCheckpoint(f, gzipMembers(f, small)))
	_, gz := buildZTOC(f, gzipMembers(f, buildTar(f, testEntries(70<<10))), 64<<10, compression.Gzip)
	f.Add(gz) // two spans: 64 KiB of checkpoint windows
	f.Fuzz(func(t *testing.T, data []byte) {
		z, err := decodeZTOC(data, Limits{}.withDefaults())
		if err != nil {
			return
		}
		toc, table, err := Convert(z)
		if err != nil {
			return
		}
		if err := table.Validate(); err != nil {
			t.Fatalf("Convert accepted an invalid span table: %v", err)
		}
		for _, e := range toc.Entries {
			checkAccepted(t, e, int64(z.UncompressedArchiveSize))
		}
	})
}

func checkAccepted(t *testing.T, e layer.Entry, size int64) {
	t.Helper()
	for _, name := range []string{e.Name, hardlinkTarget(e)} {
		if name == "" {
			continue
		}
		if name == "." || name == ".." || strings.HasPrefix(name, "/") || strings.HasPrefix(name, "../") ||
			strings.Contains(name, "/../") || strings.HasSuffix(name, "/..") || strings.Contains(name, "\x00") {
			t.Fatalf("Convert accepted the name %q", name)
		}
	}
	if e.Type == layer.TypeReg && (e.Offset < 0 || e.Size < 0 || e.Offset+e.Size > size) {
		t.Fatalf("Convert accepted data [%d, +%d) in a %d-byte stream", e.Offset, e.Size, size)
	}
	if e.Mode&^0o7777 != 0 {
		t.Fatalf("Convert kept mode bits %o", e.Mode)
	}
}

func hardlinkTarget(e layer.Entry) string {
	if e.Type == layer.TypeHardlink {
		return e.Linkname
	}
	return ""
}

// v1SingleCheckpoint builds the zTOC of a one-span gzip layer with its
// checkpoints in the version 1 format, where checkpoint 0 is implicit: a
// small zTOC, so fuzzing it is fast.
func v1SingleCheckpoint(f *testing.F, blob []byte) []byte {
	z, _ := buildZTOC(f, blob, 1<<20, compression.Gzip)
	if z.MaxSpanID != 0 {
		f.Fatalf("%d spans, want 1", z.MaxSpanID+1)
	}
	z.Checkpoints = z.Checkpoints[:blobHeaderSize] // count 1, span size, no checkpoints
	r, _, err := ztoc.Marshal(z)
	if err != nil {
		f.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		f.Fatal(err)
	}
	if _, _, err := Convert(z); err != nil {
		f.Fatalf("v1 seed: %v", err)
	}
	return data
}
