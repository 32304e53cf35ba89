package cache

import (
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// usage accounts the bytes of a Disk by group and orders the groups by last
// use. A group is the directory holding an entry (a layer served with one
// zTOC, for span keys "sha256:<layer>/sha256:<ztoc>/<range>"); a key without
// '/' is a group of its own. Pins
// protect groups (the layers mounted now) from eviction but as a last resort.
// It is not safe for concurrent use: Disk guards it with its mutex.
type usage struct {
	total  int64
	clock  uint64
	groups map[string]*group // by group path (slash-separated)
	pins   map[string]int    // pin count by key path
}

// group is the accounting of one group.
type group struct {
	bytes   int64
	used    uint64           // usage clock at the last Get or Put
	entries map[string]int64 // entry name within the group ("" for a one-key group) -> bytes
}

func newUsage() *usage {
	return &usage{groups: map[string]*group{}, pins: map[string]int{}}
}

// split returns the group of the entry at key path p and its name there.
func split(p string) (g, name string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return p, ""
	}
	return p[:i], p[i+1:]
}

// under reports whether path p is at or below dir.
func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// size returns the bytes accounted for the entry at p.
func (u *usage) size(p string) int64 {
	g, name := split(p)
	if gr := u.groups[g]; gr != nil {
		return gr.entries[name]
	}
	return 0
}

// add accounts n bytes for the entry at p, replacing what it had.
func (u *usage) add(p string, n int64) {
	g, name := split(p)
	gr := u.groups[g]
	if gr == nil {
		gr = &group{entries: map[string]int64{}}
		u.groups[g] = gr
	}
	old := gr.entries[name]
	gr.entries[name] = n
	gr.bytes += n - old
	u.total += n - old
	u.clock++
	gr.used = u.clock
}

// touchGroup marks group g as just used.
func (u *usage) touchGroup(g string) {
	if gr := u.groups[g]; gr != nil {
		u.clock++
		gr.used = u.clock
	}
}

// forget drops the accounting of everything at or below prefix p.
func (u *usage) forget(p string) {
	for g, gr := range u.groups {
		switch {
		case under(g, p):
			u.total -= gr.bytes
			delete(u.groups, g)
		case under(p, g) && p != g:
			name, _, _ := strings.Cut(p[len(g)+1:], "/")
			if n, ok := gr.entries[name]; ok {
				delete(gr.entries, name)
				gr.bytes -= n
				u.total -= n
				if len(gr.entries) == 0 {
					delete(u.groups, g)
				}
			}
		}
	}
}

// pinned reports whether group g, a prefix of it, or a path below it is
// pinned: evicting g moves its whole directory, groups nested in it too
// (a layer's directory holds one group per zTOC, and may hold entries of
// its own written by an older version). holding is pinHolders' result.
func (u *usage) pinned(g string, holding map[string]bool) bool {
	if holding[g] {
		return true
	}
	for p := g; ; p = path.Dir(p) {
		if u.pins[p] > 0 {
			return true
		}
		if !strings.Contains(p, "/") {
			return false
		}
	}
}

// pinHolders returns the strict ancestors of every pinned path.
func (u *usage) pinHolders() map[string]bool {
	holding := map[string]bool{}
	for p := range u.pins {
		for strings.Contains(p, "/") {
			p = path.Dir(p)
			holding[p] = true
		}
	}
	return holding
}

// victim returns the least recently used group to evict so that the entry
// at p can be written: unpinned groups first, pinned ones as a last resort,
// never the group of p nor one holding it. ok is false when none is left.
func (u *usage) victim(p string) (g string, ok bool) {
	own, _ := split(p)
	var best string
	var bestUsed uint64
	bestPinned := true
	holding := u.pinHolders()
	for cand, gr := range u.groups {
		if under(own, cand) {
			continue
		}
		pinned := u.pinned(cand, holding)
		better := !ok || (bestPinned && !pinned) || (pinned == bestPinned && gr.used < bestUsed)
		if better {
			best, bestUsed, bestPinned, ok = cand, gr.used, pinned, true
		}
	}
	return best, ok
}

// rebuild accounts every entry under dir (but the staging directory), the
// groups ordered by the latest modification time of their entries.
func (u *usage) rebuild(dir string) error {
	latest := map[string]time.Time{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if e.IsDir() {
			if rel == tmpDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		u.add(rel, info.Size())
		g, _ := split(rel)
		if info.ModTime().After(latest[g]) {
			latest[g] = info.ModTime()
		}
		return nil
	})
	if err != nil {
		return err
	}
	order := make([]string, 0, len(u.groups))
	for g := range u.groups {
		order = append(order, g)
	}
	sort.Slice(order, func(i, j int) bool { return latest[order[i]].Before(latest[order[j]]) })
	for i, g := range order {
		u.groups[g].used = uint64(i + 1)
	}
	u.clock = uint64(len(order))
	return nil
}
