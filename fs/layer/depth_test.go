package layer

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// chain is a path of n components "d/d/.../d".
func chain(n int) string {
	return strings.TrimSuffix(strings.Repeat("d/", n), "/")
}

// TestMaxDepth: a path of MaxDepth components is accepted, one more is
// refused with an error naming the limit, and a 100k-deep directory chain,
// one cheap entry, is refused before any of its directories is made.
func TestMaxDepth(t *testing.T) {
	for _, max := range []int{0, 5} {
		limit := max
		if limit == 0 {
			limit = DefaultMaxDepth
		}
		ok := TOC{Entries: []Entry{{Name: chain(limit-1) + "/f", Type: TypeReg}}}
		if _, err := NewRoot(ok, &memReader{}, Options{MaxDepth: max}); err != nil {
			t.Errorf("MaxDepth %d: a path of %d components: %v", max, limit, err)
		}
		deep := TOC{Entries: []Entry{{Name: chain(limit) + "/f", Type: TypeReg}}}
		_, err := NewRoot(deep, &memReader{}, Options{MaxDepth: max})
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "max_tree_depth") {
			t.Errorf("MaxDepth %d: a path of %d components: got %v, want the depth limit", max, limit+1, err)
		}
	}
	bomb := TOC{Entries: []Entry{{Name: chain(100_000), Type: TypeDir}}}
	b := newBuilder(len(bomb.Entries), 0)
	if err := b.build(bomb.Entries); err == nil || !strings.Contains(err.Error(), "max_tree_depth") {
		t.Fatalf("100k-deep chain: got %v, want the depth limit", err)
	}
	if b.files != 1 || b.implicit != 0 {
		t.Errorf("refusing the chain left %d nodes, %d implicit directories", b.files, b.implicit)
	}
}

// TestImplicitDirBound: parents created without an entry are limited to
// the entry count plus MaxDepth, so a few entries with deep fresh paths
// cannot make a tree far larger than the TOC.
func TestImplicitDirBound(t *testing.T) {
	var es []Entry
	for i := range 4 {
		es = append(es, Entry{Name: strings.Repeat(string(rune('a'+i))+"/", 9) + "f", Type: TypeReg})
	}
	// 4 entries, 36 implicit directories: over 4+30, under 4+40.
	if _, err := NewRoot(TOC{Entries: es}, &memReader{}, Options{MaxDepth: 40}); err != nil {
		t.Errorf("36 implicit directories with MaxDepth 40: %v", err)
	}
	_, err := NewRoot(TOC{Entries: es}, &memReader{}, Options{MaxDepth: 30})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "without an entry") {
		t.Errorf("36 implicit directories with MaxDepth 30: got %v, want the implicit directory bound", err)
	}
}

// TestDeepTreeIterative: with a large MaxDepth, a 100k-deep tree is built,
// replaced (unlinking it) and packed without recursion.
func TestDeepTreeIterative(t *testing.T) {
	es := []Entry{
		{Name: chain(100_000), Type: TypeDir},
		{Name: "d", Type: TypeReg}, // replaces the whole chain
		{Name: "e/" + chain(50_000) + "/f", Type: TypeReg, Size: 4096},
	}
	b := newBuilder(len(es), 200_000)
	if err := b.build(es); err != nil {
		t.Fatal(err)
	}
	// root, d, e, 50k directories, f
	if want := uint64(3 + 50_000 + 1); b.files != want {
		t.Errorf("%d live nodes, want %d", b.files, want)
	}
	if _, err := b.lookup("e/" + chain(50_000) + "/f"); err != nil {
		t.Error(err)
	}
}
