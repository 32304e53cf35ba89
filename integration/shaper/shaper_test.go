package shaper

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The tests run in synctest bubbles: time is a fake clock that moves only
// when every goroutine of the test (relays, token waits, delays) is blocked,
// so the rates below are exact measures of the shaper, not of the machine.

const testRate = 20 // Mbit/s: 2.5 MB/s, a chunk every 13 ms

func bytesPerSecond(mbit float64) float64 { return mbit * 1e6 / 8 }

// pipeConn relays one connection through s over in-memory pipes and
// returns the client's and the server's ends.
// The relay's end is added to wg.
func pipeConn(s *Shaper, c Counters, wg *sync.WaitGroup) (client, server net.Conn) {
	client, proxyClient := net.Pipe()
	proxyServer, server := net.Pipe()
	wg.Go(func() { s.Relay(proxyClient, proxyServer, c) })
	return client, server
}

// flood writes to w until it fails; drain reads r into n until it fails.
func flood(w io.Writer) {
	buf := make([]byte, 48<<10)
	for {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
}

func drain(r io.Reader, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		m, err := r.Read(buf)
		n.Add(int64(m))
		if err != nil {
			return
		}
	}
}

// throughput runs conns connections that each move data as fast as the
// link lets them (server to client when down, else client to server) for
// 3 s of fake time. It checks at every 10 ms that the bytes received so far
// never exceed limit·t plus one burst per bucket, and returns each
// connection's bytes received from 1 s to 3 s (after the start-up) per second.
func throughput(t *testing.T, link Link, conns int, down bool, limit float64, buckets int) []float64 {
	t.Helper()
	var rates []float64
	synctest.Test(t, func(t *testing.T) {
		s := New(link)
		defer s.Close()
		got := make([]atomic.Int64, conns)
		var ends []net.Conn
		var relays sync.WaitGroup
		for i := range conns {
			client, server := pipeConn(s, Counters{}, &relays)
			ends = append(ends, client, server)
			src, dst := server, client
			if !down {
				src, dst = client, server
			}
			go flood(src)
			go drain(dst, &got[i])
		}
		total := func() (n int64) {
			for i := range got {
				n += got[i].Load()
			}
			return n
		}
		start := time.Now()
		at1s := make([]int64, conns)
		for step := 1; step <= 300; step++ {
			time.Sleep(10 * time.Millisecond)
			elapsed := time.Since(start).Seconds()
			if n, max := float64(total()), limit*elapsed+float64(buckets*chunk); n > max {
				// Errorf, not Fatalf: the relays must end before the bubble does.
				t.Errorf("after %.2fs %d connections received %.0f bytes, more than %.0f (rate·t + burst)", elapsed, conns, n, max)
				break
			}
			if step == 100 {
				for i := range got {
					at1s[i] = got[i].Load()
				}
			}
		}
		for i := range at1s {
			rates = append(rates, float64(got[i].Load()-at1s[i])/2)
		}
		for _, c := range ends {
			c.Close()
		}
		relays.Wait()
	})
	return rates
}

func sum(xs []float64) (s float64) {
	for _, x := range xs {
		s += x
	}
	return s
}

// within reports whether got is within tol bytes/s of want.
func within(got, want, tol float64) bool { return got >= want-tol && got <= want+tol }

func TestSharedLinkOneConnectionGetsTheRate(t *testing.T) {
	for _, down := range []bool{true, false} {
		r := bytesPerSecond(testRate)
		rates := throughput(t, Link{Mode: Shared, RTT: 20 * time.Millisecond, RateMbit: testRate}, 1, down, r, 1)
		if !within(rates[0], r, chunk) {
			t.Errorf("down=%v: one connection got %.0f B/s, want the link's %.0f", down, rates[0], r)
		}
	}
}

func TestSharedLinkParallelConnectionsShareTheRate(t *testing.T) {
	const conns = 8
	for _, down := range []bool{true, false} {
		r := bytesPerSecond(testRate)
		rates := throughput(t, Link{Mode: Shared, RTT: 20 * time.Millisecond, RateMbit: testRate}, conns, down, r, 1)
		if total := sum(rates); !within(total, r, conns*chunk) {
			t.Errorf("down=%v: %d connections together got %.0f B/s, want the link's %.0f", down, conns, total, r)
		}
		for i, got := range rates {
			if got < r/conns/2 {
				t.Errorf("down=%v: connection %d got %.0f B/s, less than half its share %.0f", down, i, got, r/conns)
			}
		}
	}
}

func TestPerConnLinkMultipliesTheRate(t *testing.T) {
	const conns = 4
	r := bytesPerSecond(testRate)
	rates := throughput(t, Link{Mode: PerConn, RTT: 20 * time.Millisecond, RateMbit: testRate}, conns, true, conns*r, conns)
	for i, got := range rates {
		if !within(got, r, chunk) {
			t.Errorf("connection %d got %.0f B/s, want the per-connection rate %.0f", i, got, r)
		}
	}
}

// TestLatency: a request and its answer take one RTT, on a shaped link with
// and without a rate, and nothing on an unshaped one; bytes are counted in
// both directions.
func TestLatency(t *testing.T) {
	for _, tc := range []struct {
		link Link
		want time.Duration
	}{
		{Link{RTT: 50 * time.Millisecond}, 50 * time.Millisecond},
		{Link{Mode: PerConn, RTT: 30 * time.Millisecond, RateMbit: 100}, 30 * time.Millisecond},
		{Link{Mode: Shared, RTT: 20 * time.Millisecond, RateMbit: 100}, 20 * time.Millisecond},
		{Link{RTT: 20 * time.Millisecond, Unshaped: true}, 0},
	} {
		synctest.Test(t, func(t *testing.T) {
			s := New(tc.link)
			defer s.Close()
			var up, down atomic.Int64
			var relay sync.WaitGroup
			client, server := pipeConn(s, Counters{Down: &down, Up: &up}, &relay)
			go func() {
				buf := make([]byte, 4)
				if _, err := io.ReadFull(server, buf); err == nil {
					_, _ = server.Write([]byte("pong!"))
				}
				server.Close()
			}()
			start := time.Now()
			if _, err := client.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "pong!" {
				t.Fatalf("answer %q, %v", buf, err)
			}
			if got := time.Since(start); got != tc.want {
				t.Errorf("%s: round trip took %s, want %s", tc.link, got, tc.want)
			}
			client.Close()
			relay.Wait()
			if up.Load() != 4 || down.Load() != 5 {
				t.Errorf("%s: counted %d bytes up and %d down, want 4 and 5", tc.link, up.Load(), down.Load())
			}
		})
	}
}

func TestLinkLabels(t *testing.T) {
	for _, tc := range []struct {
		link        Link
		label, slug string
	}{
		{Link{RTT: 20 * time.Millisecond, RateMbit: 200}, "shared link: 20ms RTT, 200 Mbit/s each way shared by all connections", "shared-20ms-200mbit"},
		{Link{Mode: PerConn, RTT: 50 * time.Millisecond, RateMbit: 100}, "per-connection: 50ms RTT, 100 Mbit/s per TCP connection", "per-conn-50ms-100mbit"},
		{Link{Unshaped: true, RTT: time.Second}, "unshaped", "unshaped"},
	} {
		if got := tc.link.String(); got != tc.label {
			t.Errorf("label %q, want %q", got, tc.label)
		}
		if got := tc.link.Slug(); got != tc.slug {
			t.Errorf("slug %q, want %q", got, tc.slug)
		}
	}
	if _, err := ParseMode("per-connection"); err == nil {
		t.Error("ParseMode accepted an unknown mode")
	}
}
