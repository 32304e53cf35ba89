package harness

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/fastsoci/soci-snapshotter/integration/shaper"
)

// Shaping is the modelled link: RTT, rate, and whether every connection
// shares the rate (the default) or each has its own.
type Shaping = shaper.Link

// ShapedLink is a TCP proxy on 127.0.0.1 in front of an upstream address
// that shapes every connection with one shaper.Shaper and counts the bytes
// sent to clients (the bytes served).
//
//	client -> ShapedLink (Addr) -> upstream
type ShapedLink struct {
	// Addr is "127.0.0.1:PORT", the address clients use.
	Addr     string
	upstream string
	shaper   *shaper.Shaper
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for shaped link: %w", err)
	}
	l := &ShapedLink{Addr: ln.Addr().String(), upstream: upstream, shaper: shaper.New(s), listener: ln, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Served is the number of bytes sent to clients so far.
func (l *ShapedLink) Served() int64 { return l.served.Load() }

// Connections is the number of connections clients opened so far.
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
		up, err := net.Dial("tcp", l.upstream)
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

// serve relays one connection through the shaper, counting, and forgets
// it when both directions are done.
func (l *ShapedLink) serve(client, up net.Conn) {
	defer l.wg.Done()
	l.shaper.Relay(client, up, shaper.Counters{Down: &l.served, Up: &l.sent})
	l.mu.Lock()
	delete(l.conns, client)
	delete(l.conns, up)
	l.mu.Unlock()
}

// Close stops the link and closes every connection.
func (l *ShapedLink) Close() error {
	l.shaper.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	err := l.listener.Close()
	l.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
