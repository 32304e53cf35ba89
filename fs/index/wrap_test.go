package index

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestParseIndexKeepsCause: a SOCI index that is not JSON is refused with
// an error that is both the class (ErrNotSOCIIndex) and the decoder's own
// error, so callers can tell a syntax error from the rest.
func TestParseIndexKeepsCause(t *testing.T) {
	data := []byte("{not json")
	_, err := parseIndex(digest.FromBytes(data), data, "", Limits{})
	if !errors.Is(err, ErrNotSOCIIndex) {
		t.Fatalf("err = %v, want ErrNotSOCIIndex", err)
	}
	var syn *json.SyntaxError
	if !errors.As(err, &syn) {
		t.Fatalf("err = %v: the json.SyntaxError is hidden", err)
	}
}
