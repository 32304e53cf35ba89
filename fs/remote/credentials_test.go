package remote

import (
	"errors"
	"testing"
)

func TestChainCredentials(t *testing.T) {
	none := func(string) (string, string, error) { return "", "", nil }
	broken := func(string) (string, string, error) { return "", "", errors.New("broken") }
	some := func(h string) (string, string, error) { return "u-" + h, "s", nil }
	for _, tc := range []struct {
		name    string
		sources []func(string) (string, string, error)
		user    string
		err     bool
	}{
		{"first non-empty", []func(string) (string, string, error){none, nil, some}, "u-h", false},
		{"error hidden by later credentials", []func(string) (string, string, error){broken, some}, "u-h", false},
		{"error when none", []func(string) (string, string, error){none, broken}, "", true},
		{"anonymous", []func(string) (string, string, error){none}, "", false},
	} {
		u, _, err := ChainCredentials(tc.sources...)("h")
		if u != tc.user || (err != nil) != tc.err {
			t.Errorf("%s: got %q, %v", tc.name, u, err)
		}
	}
}
