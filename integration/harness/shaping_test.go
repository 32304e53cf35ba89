package harness

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

// TestShapedLink: a request through the link takes at least one RTT, is
// limited by the bandwidth, and every byte sent to the client is counted.
func TestShapedLink(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 1<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	link, err := NewShapedLink(srv.Listener.Addr().String(), Shaping{RTT: 100 * time.Millisecond, RateMbit: 40})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := client.Get("http://" + link.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body through the link: %d bytes, err %v", len(got), err)
	}
	// 1 MiB at 40 Mbit/s is about 210 ms, plus one RTT for the request.
	if elapsed < 250*time.Millisecond {
		t.Errorf("1 MiB over 100 ms RTT and 40 Mbit/s took only %s: not shaped", elapsed)
	}
	deadline := time.Now().Add(2 * time.Second)
	for link.Served() < int64(len(body)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := link.Served(); n < int64(len(body)) || n > int64(len(body))+4096 {
		t.Errorf("served bytes counted: %d, want %d plus headers", n, len(body))
	}
	if link.Received() == 0 {
		t.Errorf("request bytes not counted")
	}
}

func TestShapedLinkUnshaped(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	defer srv.Close()
	link, err := NewShapedLink(srv.Listener.Addr().String(), Shaping{Unshaped: true})
	if err != nil {
		t.Fatal(err)
	}
	defer link.Close()
	resp, err := http.Get("http://" + link.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" {
		t.Fatalf("got %q", b)
	}
}

func TestReadProcStats(t *testing.T) {
	s, err := ReadProcStats(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PeakRSS <= 0 {
		t.Errorf("peak RSS of this test: %d", s.PeakRSS)
	}
}
