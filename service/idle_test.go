package service

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fastsoci/soci-snapshotter/internal/idlemem"
)

// TestTouchingArmsRelease: each request served through touching starts the
// releaser's quiet period (it arms a timer only once touched).
func TestTouchingArmsRelease(t *testing.T) {
	armed := make(chan struct{}, 10)
	rel := idlemem.New(idlemem.Options{After: func(time.Duration) <-chan time.Time {
		armed <- struct{}{}
		return make(chan time.Time) // never fires: the test only counts arms
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rel.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	served := false
	h := touching(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served = true
		w.WriteHeader(http.StatusTeapot)
	}), rel)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
	if !served || rec.Code != http.StatusTeapot {
		t.Fatalf("wrapped handler: served %v, status %d", served, rec.Code)
	}
	select {
	case <-armed:
	case <-time.After(10 * time.Second):
		t.Fatal("a request did not start a quiet period")
	}
}
