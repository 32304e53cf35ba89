package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Key is one key of the schema as the migration guide lists it.
type Key struct {
	// Key is the dotted path; a map's key is written <name>.
	Key string
	// Default is the key's value in Default(), written as Encode writes it,
	// or "" when the key has no value by default (a map's entries).
	Default string
	// Ours is true for keys not in upstream's schema.
	Ours bool
	// Status says whether the daemon acts on the key: "acted on", or
	// "accepted, not acted on: " and why (from UnusedKeys), or for a few
	// keys what it does instead.
	Status string
}

// otherStatus is the status of keys that neither "acted on" nor a row of
// unusedKeys describes: keys left out of unusedKeys on purpose (see its
// comment) and keys acted on for some values only.
var otherStatus = map[string]string{
	"http_cache_type": "accepted, not acted on: the reference does not use it either",
	"content_store.namespace": "accepted, not acted on: the reference no longer uses it either " +
		"(it takes the namespace of each containerd request)",
	"content_store.type": `acted on: with "containerd" a SOCI index or zTOC that is not in the daemon's own store ` +
		`(under its root) is read from containerd's content store, in the namespace of the containerd request, before ` +
		`the registry, so an index built by soci create and named with nerdctl pull --soci-index-digest needs no ` +
		`registry; what is read is size-, digest- and format-checked like a download and copied into the daemon's ` +
		`store. Unlike the reference, the daemon does not write what it fetches from registries into containerd's ` +
		`content store`,
	"prefetch.enable": "acted on: the spans a layer's prefetch artifact lists (soci create/convert --prefetch-file) " +
		"are loaded into the span cache in the background right after the layer is mounted (the reference loads " +
		"them before the mount returns); not on the local-only remounts of a restart",
	"prefetch.max_concurrency": "acted on, with another unit: the prefetch range requests in flight on the node, " +
		"all layers together (the reference: layers prefetching at once); 0 is no bound of its own",
	"prefetch.record": "acted on: the FUSE host records, per image, the zTOC spans that demand reads need from " +
		"the image's first mount until record_seconds have passed or record_until_file is opened, into " +
		"<root>/fs/traces/<alg>/<manifest digest>.json; `soci prefetch from-trace` turns it into prefetch artifacts",
	"prefetch.record_seconds":    "acted on with record = true: how long an image is recorded from its first mount",
	"prefetch.record_until_file": "acted on with record = true: a path in the image whose open ends its recording",
	"content_store.containerd_address": `acted on with type = "containerd", and where parallel pull stores the ` +
		`layer blobs it downloads unless discard_unpacked_layers = true (whatever the type)`,
	"disable_verification": "accepted, overridden: span data is always verified against the zTOC; " +
		"`true` gets a warning at start",
	"debug_address": "acted on for a unix socket or a loopback host:port; any other address is accepted but not " +
		"served, with a warning at start: pprof is unauthenticated",
	"blob.valid_interval": "acted on, on reads: a blob storage URL the registry redirected to is reused only while " +
		"its last successful read is more recent than this; then the registry is asked again (a fresh URL, access " +
		"re-checked). The reference instead probes the blob when containerd checks a snapshot whose last fetch is older",
	"blob.check_always": "acted on, on reads: no blob storage URL is reused, every range read asks the registry " +
		"(one more request per read when the registry redirects). The reference instead probes the blob at every " +
		"snapshot check",
	"resolver.auth_client_ttl_sec": "acted on: a registry's credentials are read again and its tokens fetched anew " +
		"once they are this old (negative: never); hosts.toml files are still read once per registry",
	"directory_cache.max_cache_fds": "acted on, with another default: the span cache files kept open for reads " +
		"(each read of a cached span is one pread), least recently used closed first; 0 keeps 128 (the reference: 10)",
	"blob.force_single_range_mode": "accepted; always in effect whatever the value: every registry request asks for one range",
}

// mapKeyName stands for a map's key in Key.Key.
const mapKeyName = "<name>"

// Keys lists every key of the schema in schema order, walking Config's toml
// tags, with its default and whether the daemon acts on it.
func Keys() []Key {
	status := make(map[string]string, len(unusedKeys)+len(otherStatus))
	for _, u := range unusedKeys {
		status[u.Key] = "accepted, not acted on: " + u.Reason
	}
	for k, s := range otherStatus {
		status[k] = s
	}
	var keys []Key
	var walk func(t reflect.Type, v reflect.Value, prefix []string, ours bool, parentStatus string)
	walk = func(t reflect.Type, v reflect.Value, prefix []string, ours bool, parentStatus string) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			path := append(slices.Clone(prefix), name)
			k := Key{Key: strings.Join(path, "."), Ours: ours || f.Tag.Get("schema") == "ours", Status: parentStatus}
			if s, ok := status[k.Key]; ok {
				k.Status = s
			}
			var fv reflect.Value
			if v.IsValid() {
				fv = v.Field(i)
			}
			ft := f.Type
			switch {
			case ft.Kind() == reflect.Struct && ft != reflect.TypeFor[ByteSize]():
				walk(ft, fv, path, k.Ours, k.Status)
			case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
				k.Default = defaultOf(fv)
				keys = append(keys, k)
				walk(ft.Elem(), reflect.Value{}, append(path, mapKeyName), k.Ours, k.Status)
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				k.Default = defaultOf(fv)
				keys = append(keys, k)
				walk(ft.Elem(), reflect.Value{}, path, k.Ours, k.Status)
			default:
				k.Default = defaultOf(fv)
				keys = append(keys, k)
			}
		}
	}
	walk(reflect.TypeFor[Config](), reflect.ValueOf(Default()).Elem(), nil, false, "acted on")
	return keys
}

// defaultOf writes v as Encode writes a value; "" for no value (a field
// below a map or an array of tables, or an empty map or slice).
func defaultOf(v reflect.Value) string {
	if !v.IsValid() {
		return ""
	}
	if (v.Kind() == reflect.Map || v.Kind() == reflect.Slice) && v.Len() == 0 {
		return ""
	}
	out, err := toml.Marshal(map[string]any{"k": v.Interface()})
	if err != nil {
		// Encode(Default()) is tested to succeed, so every default
		// marshals; show the failure rather than hide the key.
		return fmt.Sprintf("(%v)", err)
	}
	_, value, _ := strings.Cut(strings.TrimSpace(string(out)), " = ")
	return value
}

// KeyTable returns Keys as the Markdown table of docs/migration.md.
func KeyTable() string {
	var b strings.Builder
	b.WriteString("| key | default | reference | status |\n|---|---|---|---|\n")
	for _, k := range Keys() {
		def := "none"
		if k.Default != "" {
			def = "`" + k.Default + "`"
		}
		ref := "yes"
		if k.Ours {
			ref = "ours"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", k.Key, def, ref, strings.ReplaceAll(k.Status, "|", `\|`))
	}
	return b.String()
}
