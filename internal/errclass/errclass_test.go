package errclass

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
)

func TestNoIndexIsNotFound(t *testing.T) {
	err := fmt.Errorf("no SOCI index for image manifest sha256:m: %w", ErrNoIndex)
	if !errors.Is(err, ErrNoIndex) || !errdefs.IsNotFound(err) {
		t.Fatalf("%v: ErrNoIndex %v, NotFound %v", err, errors.Is(err, ErrNoIndex), errdefs.IsNotFound(err))
	}
	if errors.Is(fmt.Errorf("no zTOC: %w", errdefs.ErrNotFound), ErrNoIndex) {
		t.Fatal("a plain NotFound is ErrNoIndex")
	}
}
