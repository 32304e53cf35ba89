package config

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// keyError is a problem with one setting, named by its dotted key path
// (e.g. background_fetch.drop_policy, or resolver.host."docker.io".mirrors[0].host).
type keyError struct {
	key  string
	line int // 1-based; 0 when unknown
	msg  string
}

func (e *keyError) Error() string {
	var b strings.Builder
	if e.line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.line)
	}
	if e.key != "" {
		b.WriteString(e.key)
		b.WriteString(": ")
	}
	b.WriteString(e.msg)
	return b.String()
}

// describeDecodeError turns go-toml's errors into keyErrors.
func describeDecodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		errs := make([]error, 0, len(strict.Errors))
		for i := range strict.Errors {
			e := &strict.Errors[i]
			line, _ := e.Position()
			errs = append(errs, &keyError{key: formatKey(e.Key()), line: line, msg: "unknown key"})
		}
		return errors.Join(errs...)
	}
	var decode *toml.DecodeError
	if errors.As(err, &decode) {
		line, _ := decode.Position()
		msg := strings.TrimPrefix(decode.Error(), "toml: ")
		if len(decode.Key()) == 0 {
			return &keyError{line: line, msg: "invalid TOML: " + msg}
		}
		return &keyError{key: formatKey(decode.Key()), line: line, msg: friendlyTypeError(msg)}
	}
	return fmt.Errorf("decode TOML: %w", err)
}

// friendlyTypeError rewrites go-toml's wrong-type message, which names Go
// types, in terms of TOML types. Other messages are returned unchanged.
func friendlyTypeError(msg string) string {
	rest, ok := strings.CutPrefix(msg, "cannot decode TOML ")
	if !ok {
		return msg
	}
	got, target, ok := strings.Cut(rest, " into ")
	if !ok {
		return msg
	}
	// The target is a Go type, possibly as "struct field X of type T".
	if i := strings.LastIndex(target, " of type "); i >= 0 {
		target = target[i+len(" of type "):]
	}
	return fmt.Sprintf("wrong type: got a TOML %s, want %s", got, tomlTypeOf(target))
}

// tomlTypeOf names the TOML type that decodes into the Go type named goType.
func tomlTypeOf(goType string) string {
	switch goType {
	case "bool":
		return "a boolean"
	case "string", "config.ContentStoreType":
		return "a string"
	case "config.ByteSize":
		return "a string such as \"8mb\""
	case "int", "int64", "config.Seconds", "config.Milliseconds":
		return "an integer"
	}
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case strings.HasPrefix(goType, "map[") || strings.HasPrefix(goType, "config."):
		return "a table"
	}
	return goType
}

// formatKey writes a TOML key as a dotted path, quoting parts that are not
// bare keys.
func formatKey(key []string) string {
	parts := make([]string, len(key))
	for i, k := range key {
		parts[i] = quoteKeyPart(k)
	}
	return strings.Join(parts, ".")
}

func quoteKeyPart(k string) string {
	if k == "" {
		return `""`
	}
	for _, r := range k {
		bare := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
		if !bare {
			return strconv.Quote(k)
		}
	}
	return k
}

// withLines adds line numbers to the keyErrors in err: the line of the key,
// or, for a key the document leaves out, of the nearest table around it.
func withLines(err error, lines map[string]int) error {
	var errs []error
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		var ke *keyError
		if errors.As(e, &ke) && ke.line == 0 {
			ke.line = lineOf(ke.key, lines)
		}
	}
	return err
}

// lineOf looks key up in lines, then its parents. Cutting at a dot inside a
// quoted part yields a path no document has, so such steps just miss.
func lineOf(key string, lines map[string]int) int {
	for key != "" {
		if line, ok := lines[key]; ok {
			return line
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

// keyLines maps the dotted path of every key and table header in a TOML
// document to the line it is on. Elements of arrays of tables are indexed
// as path[i]. Lines of a document that does not parse are best effort.
func keyLines(data []byte) map[string]int {
	lines := make(map[string]int)
	arrayCounts := make(map[string]int)
	counter := lineCounter{data: data, line: 1}
	var p unstable.Parser
	p.Reset(data)
	table := ""
	for p.NextExpression() {
		expr := p.Expression()
		var path string
		var line int
		switch expr.Kind {
		case unstable.Table:
			table, line = keyOf(expr, &counter)
			path = table
		case unstable.ArrayTable:
			path, line = keyOf(expr, &counter)
			table = fmt.Sprintf("%s[%d]", path, arrayCounts[path])
			arrayCounts[path]++
			path = table
		case unstable.KeyValue:
			path, line = keyOf(expr, &counter)
			if table != "" {
				path = table + "." + path
			}
		default:
			continue
		}
		if _, seen := lines[path]; !seen {
			lines[path] = line
		}
	}
	return lines
}

// keyOf returns the dotted key of a table header or key-value expression and
// the line of its first part.
func keyOf(expr *unstable.Node, counter *lineCounter) (string, int) {
	var parts []string
	line := 0
	it := expr.Key()
	for it.Next() {
		n := it.Node()
		if line == 0 {
			line = counter.lineAt(int(n.Raw.Offset))
		}
		parts = append(parts, string(n.Data))
	}
	return formatKey(parts), line
}

// lineCounter turns byte offsets, asked for in increasing order, into line
// numbers in time linear in the document's size.
type lineCounter struct {
	data   []byte
	offset int
	line   int
}

func (c *lineCounter) lineAt(offset int) int {
	offset = min(offset, len(c.data))
	if offset < c.offset {
		c.offset, c.line = 0, 1
	}
	c.line += bytes.Count(c.data[c.offset:offset], []byte{'\n'})
	c.offset = offset
	return c.line
}
