package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Shaping describes a network link: round-trip time and bandwidth. A zero
// value (or Unshaped) adds nothing.
type Shaping struct {
	RTT time.Duration
	// BandwidthMbit is the downstream (registry to client) rate in Mbit/s; 0 is unlimited.
	BandwidthMbit float64
	Unshaped      bool
}

func (s Shaping) String() string {
	if s.Unshaped || (s.RTT == 0 && s.BandwidthMbit == 0) {
		return "unshaped"
	}
	return fmt.Sprintf("%s RTT, %g Mbit/s", s.RTT, s.BandwidthMbit)
}

// ShapedLink is a TCP proxy on 127.0.0.1 in front of an upstream address:
// toxiproxy (in process) adds latency and a bandwidth limit, and a counting
// front end records every byte sent to clients (the bytes served).
//
//	client -> counter (Addr) -> toxiproxy -> upstream
type ShapedLink struct {
	// Addr is "127.0.0.1:PORT", the address clients use.
	Addr     string
	proxy    *toxiproxy.Proxy
	listener net.Listener
	served   atomic.Int64 // upstream -> client bytes
	sent     atomic.Int64 // client -> upstream bytes
	accepted atomic.Int64 // connections
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
}

// NewShapedLink starts a shaped proxy to upstream ("host:port").
func NewShapedLink(upstream string, s Shaping) (*ShapedLink, error) {
	logger := zerolog.New(io.Discard).Level(zerolog.Disabled)
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), logger)
	p := toxiproxy.NewProxy(server, "registry", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("start toxiproxy to %s: %w", upstream, err)
	}
	l := &ShapedLink{proxy: p, conns: map[net.Conn]struct{}{}}
	if err := l.addToxics(s); err != nil {
		p.Stop()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("listen for shaped link: %w", err)
	}
	l.listener = ln
	l.Addr = ln.Addr().String()
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// addToxics adds half the RTT as latency in each direction and the bandwidth
// limit on the downstream direction.
func (l *ShapedLink) addToxics(s Shaping) error {
	if s.Unshaped {
		return nil
	}
	var toxics []string
	if s.RTT > 0 {
		half := s.RTT.Milliseconds() / 2
		for _, dir := range []string{"upstream", "downstream"} {
			toxics = append(toxics, fmt.Sprintf(`{"name":"latency_%s","type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d,"jitter":0}}`, dir, dir, half))
		}
	}
	if s.BandwidthMbit > 0 {
		kbps := int64(s.BandwidthMbit * 1e6 / 8 / 1000) // toxiproxy's rate is in KB/s
		toxics = append(toxics, fmt.Sprintf(`{"name":"bandwidth_downstream","type":"bandwidth","stream":"downstream","toxicity":1,"attributes":{"rate":%d}}`, kbps))
	}
	for _, t := range toxics {
		if _, err := l.proxy.Toxics.AddToxicJson(strings.NewReader(t)); err != nil {
			return fmt.Errorf("add toxic %s: %w", t, err)
		}
	}
	return nil
}

// Served is the number of bytes sent to clients so far.
func (l *ShapedLink) Served() int64 { return l.served.Load() }

// Connections is the number of connections clients opened so far. The
// bandwidth limit applies to each connection on its own (toxiproxy's
// semantics), so parallel downloads share no budget.
func (l *ShapedLink) Connections() int64 { return l.accepted.Load() }

// Received is the number of bytes clients sent so far.
func (l *ShapedLink) Received() int64 { return l.sent.Load() }

func (l *ShapedLink) accept() {
	defer l.wg.Done()
	for {
		c, err := l.listener.Accept()
		if err != nil {
			return
		}
		l.accepted.Add(1)
		up, err := net.Dial("tcp", l.proxy.Listen)
		if err != nil {
			c.Close()
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		l.conns[c], l.conns[up] = struct{}{}, struct{}{}
		l.mu.Unlock()
		l.wg.Add(1)
		go l.serve(c, up)
	}
}

// serve copies both directions of one connection, counting, and closes both
// ends when both directions are done.
func (l *ShapedLink) serve(client, up net.Conn) {
	defer l.wg.Done()
	done := make(chan struct{})
	go func() {
		pipe(up, client, &l.sent)
		close(done)
	}()
	pipe(client, up, &l.served)
	<-done
	l.mu.Lock()
	delete(l.conns, client)
	delete(l.conns, up)
	l.mu.Unlock()
	client.Close()
	up.Close()
}

// pipe copies src to dst, counting what was written, then half-closes dst.
func pipe(dst, src net.Conn, n *atomic.Int64) {
	buf := make([]byte, 64<<10)
	for {
		m, err := src.Read(buf)
		if m > 0 {
			if _, werr := dst.Write(buf[:m]); werr != nil {
				src.Close()
				break
			}
			n.Add(int64(m))
		}
		if err != nil {
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// Close stops the link and closes every connection.
func (l *ShapedLink) Close() error {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	err := l.listener.Close()
	l.wg.Wait()
	l.proxy.Stop()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
