// Package shaper models a network link between clients and one server for
// the benchmark and the tests: a delay of half the round-trip time in each
// direction and a rate limit, either one link that every connection shares
// (a node's NIC, a registry's egress) or a limit per TCP connection.
//
// Each direction of a connection is a pipeline: a reader takes up to a chunk
// from the source, waits for that many tokens of the direction's bucket
// (the link's), and queues the chunk with a due time half an RTT later; a
// writer delivers chunks to the destination when they are due. Chunks are
// in flight together, as on a wire, so latency does not divide throughput.
package shaper

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Mode says who shares a link's rate.
type Mode string

const (
	// Shared: one bucket per direction for every connection, as the NIC
	// of a node: parallel connections together get the rate.
	Shared Mode = "shared"
	// PerConn: a bucket per direction per connection (toxiproxy's
	// bandwidth toxic): n parallel connections get n times the rate.
	PerConn Mode = "per-conn"
)

// ParseMode parses "shared" or "per-conn".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case Shared, PerConn:
		return Mode(s), nil
	}
	return "", fmt.Errorf("shaping mode %q: want %q or %q", s, Shared, PerConn)
}

// Link describes the modelled link. The zero value adds nothing.
type Link struct {
	Mode Mode // "" is Shared
	RTT  time.Duration
	// RateMbit is the rate of each direction in Mbit/s; 0 is unlimited.
	RateMbit float64
	Unshaped bool
}

// Shaped reports whether the link adds delay or a limit.
func (l Link) Shaped() bool { return !l.Unshaped && (l.RTT > 0 || l.RateMbit > 0) }

func (l Link) mode() Mode {
	if l.Mode == "" {
		return Shared
	}
	return l.Mode
}

// String labels tables and charts with the link and its mode.
func (l Link) String() string {
	if !l.Shaped() {
		return "unshaped"
	}
	rate := "unlimited rate"
	if l.RateMbit > 0 {
		rate = fmt.Sprintf("%g Mbit/s", l.RateMbit)
	}
	if l.mode() == PerConn {
		return fmt.Sprintf("per-connection: %s RTT, %s per TCP connection", l.RTT, rate)
	}
	return fmt.Sprintf("shared link: %s RTT, %s each way shared by all connections", l.RTT, rate)
}

// Slug names files after the link: "shared-20ms-200mbit".
func (l Link) Slug() string {
	if !l.Shaped() {
		return "unshaped"
	}
	return fmt.Sprintf("%s-%s-%gmbit", l.mode(), l.RTT, l.RateMbit)
}

// chunk is the most a direction moves per token wait; the buckets' burst.
const chunk = 32 << 10

// Shaper applies a Link to the connections it relays.
type Shaper struct {
	link     Link
	up, down *rate.Limiter // shared buckets; nil unless Shared with a rate
	ctx      context.Context
	cancel   context.CancelFunc
}

// New returns a shaper for link. Close releases relays waiting for tokens.
func New(link Link) *Shaper {
	s := &Shaper{link: link}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if link.Shaped() && link.mode() == Shared {
		s.up, s.down = link.bucket(), link.bucket()
	}
	return s
}

// bucket is a token bucket of the link's rate in bytes per second, nil when
// the rate is unlimited.
func (l Link) bucket() *rate.Limiter {
	if l.Unshaped || l.RateMbit <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(l.RateMbit*1e6/8), chunk)
}

// Close makes relays stop waiting for tokens; it does not close connections.
func (s *Shaper) Close() { s.cancel() }

// Counters are where a relay adds the bytes it delivered.
type Counters struct {
	Down *atomic.Int64 // server to client
	Up   *atomic.Int64 // client to server
}

// Relay moves data between client and server, shaped, until both
// directions have ended, then closes both connections.
func (s *Shaper) Relay(client, server net.Conn, c Counters) {
	up, down := s.up, s.down
	if s.link.Shaped() && s.link.mode() == PerConn {
		up, down = s.link.bucket(), s.link.bucket()
	}
	var delay time.Duration
	if s.link.Shaped() {
		delay = s.link.RTT / 2
	}
	done := make(chan struct{})
	go func() {
		s.direction(server, client, up, delay, c.Up)
		close(done)
	}()
	s.direction(client, server, down, delay, c.Down)
	<-done
	client.Close()
	server.Close()
}

type segment struct {
	data []byte
	due  time.Time
}

// direction copies src to dst through the bucket and the delay, adding
// what it delivered to n, then half-closes dst (closes it if it cannot).
func (s *Shaper) direction(dst, src net.Conn, bucket *rate.Limiter, delay time.Duration, n *atomic.Int64) {
	// At most about a bandwidth-delay product in flight, at least a few
	// chunks; the reader stops when the writer cannot deliver.
	inFlight := 64
	if bucket != nil {
		inFlight = min(64, max(4, int(float64(bucket.Limit())*delay.Seconds())/chunk+2))
	}
	queue := make(chan segment, inFlight)
	stop := make(chan struct{})
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, chunk)
			m, err := src.Read(buf)
			if m > 0 {
				if bucket != nil && bucket.WaitN(s.ctx, m) != nil {
					return
				}
				select {
				case queue <- segment{buf[:m], time.Now().Add(delay)}:
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	for seg := range queue {
		if d := time.Until(seg.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(seg.data); err != nil {
			close(stop)
			src.Close()
			for range queue {
			}
			break
		}
		if n != nil {
			n.Add(int64(len(seg.data)))
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		dst.Close()
	}
}
