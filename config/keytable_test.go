package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

const (
	migrationDoc = "../docs/migration.md"
	keysBegin    = "<!-- keys:begin -->\n"
	keysEnd      = "<!-- keys:end -->"
)

// TestMigrationDocKeyTable keeps the key table of docs/migration.md equal to
// KeyTable(); -update rewrites it.
func TestMigrationDocKeyTable(t *testing.T) {
	doc, err := os.ReadFile(migrationDoc)
	if err != nil {
		t.Fatal(err)
	}
	begin := bytes.Index(doc, []byte(keysBegin))
	end := bytes.Index(doc, []byte(keysEnd))
	if begin < 0 || end < begin {
		t.Fatalf("%s: no %q ... %q section", migrationDoc, strings.TrimSpace(keysBegin), keysEnd)
	}
	begin += len(keysBegin)
	want := KeyTable()
	if string(doc[begin:end]) == want {
		return
	}
	if *update {
		out := slices.Concat(doc[:begin], []byte(want), doc[end:])
		if err := os.WriteFile(migrationDoc, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s: the key table differs from KeyTable(); run `go test ./config -run TestMigrationDocKeyTable -update`\nwant:\n%s",
		migrationDoc, want)
}

// TestKeysDefaults: a file setting every key to the default Keys reports
// for it reads back as Default(), so the table's defaults are the real ones
// and in a form the file accepts.
func TestKeysDefaults(t *testing.T) {
	var doc strings.Builder
	for _, k := range Keys() {
		if k.Default == "" {
			continue
		}
		doc.WriteString(k.Key + " = " + k.Default + "\n")
	}
	got, err := Parse([]byte(doc.String()))
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, doc.String())
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Errorf("the defaults of Keys() read back as\n%+v\nwant Default()\n%+v\n%s", got, want, doc.String())
	}
}

// TestKeysOursMatchUpstream: the keys that files written for upstream set
// (testdata/upstream, which use every key of its schema) are exactly the
// keys not marked as ours.
func TestKeysOursMatchUpstream(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "upstream", "*.toml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no upstream files: %v", err)
	}
	var paths [][]string
	for _, f := range files {
		var doc map[string]any
		if err := toml.Unmarshal(readTestdata(t, strings.TrimPrefix(f, "testdata/")), &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		paths = append(paths, flatten(doc, nil)...)
	}
	keys := Keys()
	for _, p := range paths {
		for _, k := range keys {
			if keyCovers(k.Key, p) && k.Ours {
				t.Errorf("%s is set by an upstream file but marked ours", strings.Join(p, "."))
			}
		}
	}
	for _, k := range keys {
		if k.Ours {
			continue
		}
		if !slices.ContainsFunc(paths, func(p []string) bool { return keyCovers(k.Key, p) }) {
			t.Errorf("%s is not marked ours but no upstream file sets it", k.Key)
		}
	}
	if !slices.ContainsFunc(keys, func(k Key) bool { return k.Ours }) {
		t.Error("no key is marked ours")
	}
}

// flatten lists the key paths of a decoded TOML document down to its
// values; arrays of tables add no part.
func flatten(v any, prefix []string) [][]string {
	switch v := v.(type) {
	case map[string]any:
		var out [][]string
		for k, sub := range v {
			out = append(out, flatten(sub, append(slices.Clone(prefix), k))...)
		}
		return out
	case []any:
		var out [][]string
		for _, e := range v {
			if m, ok := e.(map[string]any); ok {
				out = append(out, flatten(m, prefix)...)
			}
		}
		if out == nil {
			out = [][]string{prefix}
		}
		return out
	default:
		return [][]string{prefix}
	}
}

// keyCovers reports whether path is key or below it, a mapKeyName part of
// key matching any part.
func keyCovers(key string, path []string) bool {
	parts := strings.Split(key, ".")
	if len(parts) > len(path) {
		return false
	}
	for i, p := range parts {
		if p != mapKeyName && !strings.EqualFold(p, path[i]) {
			return false
		}
	}
	return true
}

func TestOtherStatusKeysAreInSchema(t *testing.T) {
	rows := map[string]Key{}
	for _, k := range Keys() {
		rows[k.Key] = k
	}
	for key, status := range otherStatus {
		if rows[key].Status != status || status == "" {
			t.Errorf("otherStatus[%q]: not a key of the schema, or no status", key)
		}
	}
	for _, u := range UnusedKeys() {
		if _, ok := otherStatus[u.Key]; !ok && rows[u.Key].Status != "accepted, not acted on: "+u.Reason {
			t.Errorf("%s: status %q, want the reason of UnusedKeys", u.Key, rows[u.Key].Status)
		}
	}
}
