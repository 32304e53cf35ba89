package config

import (
	"reflect"
	"testing"
)

func TestKeyLines(t *testing.T) {
	doc := `top = 1
[a]
  b.c = 2
[host."docker.io"]
[[host."docker.io".mirrors]]
  url = 'x'
[[host."docker.io".mirrors]]

  url = 'y'
`
	want := map[string]int{
		"top":                             1,
		"a":                               2,
		"a.b.c":                           3,
		`host."docker.io"`:                4,
		`host."docker.io".mirrors[0]`:     5,
		`host."docker.io".mirrors[0].url`: 6,
		`host."docker.io".mirrors[1]`:     7,
		`host."docker.io".mirrors[1].url`: 9,
	}
	if got := keyLines([]byte(doc)); !reflect.DeepEqual(got, want) {
		t.Errorf("keyLines = %v, want %v", got, want)
	}
}

func TestLineOfFallsBackToTable(t *testing.T) {
	lines := map[string]int{`resolver.host."a.io".mirrors[0]`: 7, "resolver": 3}
	tests := map[string]int{
		`resolver.host."a.io".mirrors[0].host`: 7,
		`resolver.host."b.io".mirrors[0].host`: 3,
		"fuse.attr_timeout":                    0,
	}
	for key, want := range tests {
		if got := lineOf(key, lines); got != want {
			t.Errorf("lineOf(%s) = %d, want %d", key, got, want)
		}
	}
}

func TestFormatKey(t *testing.T) {
	tests := map[string][]string{
		"a.b_c.d-e":                 {"a", "b_c", "d-e"},
		`resolver.host."docker.io"`: {"resolver", "host", "docker.io"},
		`x."".y`:                    {"x", "", "y"},
		`"a b"`:                     {"a b"},
	}
	for want, key := range tests {
		if got := formatKey(key); got != want {
			t.Errorf("formatKey(%q) = %s, want %s", key, got, want)
		}
	}
}
