package index

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/awslabs/soci-snapshotter/ztoc"
)

// TestDecodeLikeSoci: our flatbuffer decoder gives exactly the Ztoc soci's
// Unmarshal gives, for zTOCs of several shapes, and its checkpoint blob is
// the one inside the bytes decoded, not a copy.
func TestDecodeLikeSoci(t *testing.T) {
	cases := map[string][]byte{
		"gzip layer":       newTestLayer(t, 300<<10, 64<<10).ztocData,
		"xattrs":           synthZTOC(t, 64<<10, 1<<20, synthFiles(200, 10, 0, 4)),
		"long names":       synthZTOC(t, 64<<10, 1<<20, synthFiles(50, 20, 1000, 0)),
		"many checkpoints": synthZTOC(t, 2<<20, 32<<10, synthFiles(20, 5, 0, 0)),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			want, err := ztoc.Unmarshal(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeFlatbuffer(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded differently:\n got %+v\nwant %+v", got.TOC.FileMetadata[:min(3, len(got.FileMetadata))], want.TOC.FileMetadata[:min(3, len(want.FileMetadata))])
			}
			off, n, err := checkpointsAt(data)
			if err != nil || n != len(got.Checkpoints) || &data[off] != &got.Checkpoints[0] {
				t.Fatalf("checkpoints are not the blob inside the zTOC bytes (%v)", err)
			}
		})
	}
}
