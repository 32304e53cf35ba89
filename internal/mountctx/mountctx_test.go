package mountctx

import (
	"context"
	"testing"
)

func TestLocalOnly(t *testing.T) {
	ctx := context.Background()
	if LocalOnly(ctx) {
		t.Fatal("plain context is local-only")
	}
	if !LocalOnly(WithLocalOnly(ctx)) {
		t.Fatal("WithLocalOnly not seen")
	}
}
