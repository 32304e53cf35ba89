package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// NoticeKind says why a key of a configuration file gets a Notice.
type NoticeKind int

const (
	// UnknownKey is a key that is not in the schema: a typo, or a key that
	// upstream used to have. The daemon ignores it, as upstream does.
	UnknownKey NoticeKind = iota + 1
	// UnusedKey is a key of the schema that the daemon accepts but does
	// not act on (see UnusedKeys).
	UnusedKey
)

// Notice is one key of a configuration file that the daemon does not act
// on as written. It is not an error: the daemon starts and logs it as a
// warning; `config check` fails on it.
type Notice struct {
	Kind NoticeKind
	// Key is the dotted key path as written, e.g. fuse.attr_timeout.
	Key string
	// Line is the 1-based line of the key, 0 when unknown.
	Line int
	// Suggestion is the nearest key of the schema to an unknown key, or
	// "" when none is near.
	Suggestion string
	// Reason says what the daemon does instead.
	Reason string
}

// String describes the notice in one line.
func (n Notice) String() string {
	var b strings.Builder
	if n.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", n.Line)
	}
	b.WriteString(n.Key)
	switch n.Kind {
	case UnknownKey:
		b.WriteString(": unknown key, ignored")
		if n.Suggestion != "" {
			fmt.Fprintf(&b, "; did you mean %s?", n.Suggestion)
		}
	case UnusedKey:
		b.WriteString(": accepted but not acted on")
	}
	if n.Reason != "" {
		b.WriteString(": ")
		b.WriteString(n.Reason)
	}
	return b.String()
}

// legacyKeys are keys upstream removed or moved, with what replaces them.
// They are matched case-insensitively against the whole dotted path.
var legacyKeys = map[string]struct{ suggestion, reason string }{
	"allow_no_verification": {"disable_verification",
		"removed upstream (it was never connected to anything); spans are always verified"},
	"no_background_fetch": {"background_fetch.disable", "moved upstream to [background_fetch] disable"},
	"prioritized_task_silence_period_msec": {"background_fetch.silence_period_msec",
		"removed upstream; the background fetcher's pause after a mount is [background_fetch] silence_period_msec"},
	"prefetch_max_concurrency": {"prefetch.max_concurrency", "moved upstream to [prefetch] max_concurrency"},
}

// unknownKeyNotices turns go-toml's list of unknown keys into notices, with
// the nearest known key.
func unknownKeyNotices(strict *toml.StrictMissingError) []Notice {
	known := schemaKeys()
	notices := make([]Notice, 0, len(strict.Errors))
	for i := range strict.Errors {
		e := &strict.Errors[i]
		line, _ := e.Position()
		n := Notice{Kind: UnknownKey, Key: formatKey(e.Key()), Line: line}
		if legacy, ok := legacyKeys[strings.ToLower(n.Key)]; ok {
			n.Suggestion, n.Reason = legacy.suggestion, legacy.reason
		} else {
			n.Suggestion = nearestKey(e.Key(), known)
		}
		notices = append(notices, n)
	}
	return notices
}

// mapKey stands for any key of a TOML table that decodes into a Go map
// (a registry host name, a compression name) in schema paths.
const mapKey = "*"

// schemaKeys lists the dotted paths of every key of the schema, as parts;
// map keys are mapKey.
func schemaKeys() [][]string {
	var keys [][]string
	var walk func(t reflect.Type, prefix []string)
	walk = func(t reflect.Type, prefix []string) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			path := append(slices.Clone(prefix), name)
			ft := f.Type
			switch {
			case ft.Kind() == reflect.Struct:
				keys = append(keys, path)
				walk(ft, path)
			case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
				keys = append(keys, path)
				walk(ft.Elem(), append(path, mapKey))
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				keys = append(keys, path)
				walk(ft.Elem(), path)
			default:
				keys = append(keys, path)
			}
		}
	}
	walk(reflect.TypeFor[Config](), nil)
	return keys
}

// nearestKey returns the known key closest to key by edit distance over the
// whole dotted path, or "" when none is close enough to be a likely typo.
// A known key whose last part equals key's last part (a key written in the
// wrong table) counts as close.
func nearestKey(key []string, known [][]string) string {
	if len(key) == 0 {
		return ""
	}
	written := strings.ToLower(strings.Join(key, "."))
	leaf := strings.ToLower(key[len(key)-1])
	best, bestDist := "", -1
	for _, k := range known {
		candidate := instantiate(k, key)
		dist := editDistance(written, strings.ToLower(strings.Join(candidate, ".")))
		if strings.EqualFold(candidate[len(candidate)-1], leaf) && dist > 1 {
			dist = 1
		}
		if bestDist < 0 || dist < bestDist {
			best, bestDist = formatKey(candidate), dist
		}
	}
	// Allow about one typo per three characters of the written key's last
	// part, at least two.
	if bestDist < 0 || bestDist > max(2, len(leaf)/3) {
		return ""
	}
	return best
}

// instantiate replaces the map wildcards of a schema path by the parts the
// written key has at the same positions.
func instantiate(schema, key []string) []string {
	out := slices.Clone(schema)
	for i, p := range out {
		if p == mapKey {
			if i < len(key) {
				out[i] = key[i]
			} else {
				out[i] = "<name>"
			}
		}
	}
	return out
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
