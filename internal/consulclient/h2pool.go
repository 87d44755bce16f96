package consulclient

// The HTTP/2 connections of a process that holds many blocking queries at once.
//
// A Consul agent refuses more than limits.http_max_conns_per_client TCP connections from one address
// (default 200) with 429 Too Many Requests. Over HTTP/1.1 every blocking query in flight holds a
// connection, so a watcher of one query per service reaches that limit at about 200 services. The
// agent's HTTPS port speaks HTTP/2, which carries up to 250 concurrent streams on one connection
// (the Go HTTP/2 server's default, which Consul keeps), and the limit counts connections, not
// streams: 2,000 blocking queries fit in 8 connections, if the client fills each before it opens the
// next. net/http's own HTTP/2 does not at start-up: until it holds a connection to the host, each of
// 2,000 requests started together dials its own, and the agent refuses all but 200.
//
// h2Pool keeps a list of HTTP/2 client connections to one agent. A request takes a stream on the
// first connection that has one free (ReserveNewRequest). When none has, one connection is dialled,
// and every request that finds the pool full meanwhile waits for that dial instead of starting its
// own: at most one dial is in flight, so the connections grow one at a time, each filled before the
// next is opened, and ceil(requests in flight / 250) are open. A new connection is offered to
// requests only once the agent's SETTINGS frame has arrived (the answer to a ping follows it), so
// that it is filled to the agent's limit of 250, not to HTTP/2's provisional 100. A dial that fails
// fails every request that waited for it; the next request dials again. Connections that closed (the
// agent restarted, or sent GOAWAY) are dropped from the list as a request meets them. An agent that
// does not negotiate HTTP/2 (ALPN) is reached through the fallback transport instead, as New's
// clients reach it. Close closes every connection; requests in flight fail.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/http2"
)

// dialTimeout bounds one connection's dial, TLS handshake and first ping.
const dialTimeout = 10 * time.Second

// errPoolClosed is returned by requests made after the pool was closed.
var errPoolClosed = errors.New("consulclient: the client is closed")

// ErrNotHTTP2 says that the agent did not negotiate HTTP/2 (ALPN "h2") on its HTTPS port: a Pooled
// client's requests go through its fallback transport, and a Mux's requests fail with it so that
// the caller falls back to net/http.
var ErrNotHTTP2 = errors.New("consulclient: the agent did not negotiate HTTP/2")

// h2Pool is an http.RoundTripper over a growing set of HTTP/2 connections to one agent (see the
// file's comment). It is safe for concurrent use.
type h2Pool struct {
	addr     string // host:port of the agent
	dialer   *h2Dialer
	t        *http2.Transport
	fallback http.RoundTripper // the agent's HTTPS over net/http, when it does not speak HTTP/2

	ctx    context.Context // cancelled by Close: ends a dial in progress
	cancel context.CancelFunc
	wg     sync.WaitGroup // the dial in progress
	h1     atomic.Bool    // the agent did not negotiate HTTP/2

	mu      sync.Mutex
	conns   []*http2.ClientConn
	dialing *pendingDial // nil when no dial is in flight
	closed  bool
}

// pendingDial is a dial in flight, awaited by every request that found the pool full.
type pendingDial struct {
	done chan struct{}
	cc   *http2.ClientConn // set when done, unless err
	err  error
}

// newH2Pool returns a pool of HTTP/2 connections to the agent at addr (host:port) over TLS with
// base's TLS configuration, dialled with base's DialTLSContext or DialContext when set; requests
// go through base when the agent does not speak HTTP/2.
func newH2Pool(addr string, base *http.Transport) *h2Pool {
	p := &h2Pool{addr: addr, dialer: newH2Dialer(addr, base.TLSClientConfig, base), fallback: base,
		t: &http2.Transport{IdleConnTimeout: base.IdleConnTimeout, DisableCompression: base.DisableCompression}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p
}

// h2Dialer opens TLS connections to one agent that speak HTTP/2, for h2Pool and Mux alike: the same
// TLS configuration and dialer, the same test of ALPN, and the same reading of the agent's first
// bytes, which tells a refusal (limits.http_max_conns_per_client) from an HTTP/2 server.
type h2Dialer struct {
	addr    string // host:port of the agent
	tlsConf *tls.Config
	dialTLS func(ctx context.Context, network, addr string) (net.Conn, error)
}

// newH2Dialer returns a dialer of the agent at addr (host:port) over TLS with tlsConf (nil: a
// default configuration), offering HTTP/2 and HTTP/1.1, dialled with base's DialTLSContext or
// DialContext when set.
func newH2Dialer(addr string, tlsConf *tls.Config, base *http.Transport) *h2Dialer {
	conf := &tls.Config{}
	if tlsConf != nil {
		conf = tlsConf.Clone()
	}
	conf.NextProtos = []string{http2.NextProtoTLS, "http/1.1"} // a server that knows only HTTP/1.1 refuses h2 alone
	if conf.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			conf.ServerName = host
		}
	}
	d := &h2Dialer{addr: addr, tlsConf: conf, dialTLS: base.DialTLSContext}
	if d.dialTLS == nil {
		dial := base.DialContext
		if dial == nil {
			dial = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
		}
		d.dialTLS = func(ctx context.Context, network, addr string) (net.Conn, error) {
			raw, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			c := tls.Client(raw, d.tlsConf)
			if err := c.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return c, nil
		}
	}
	return d
}

// dial connects to the agent and checks that it negotiated HTTP/2 (else ErrNotHTTP2) and did not
// refuse the connection (else an api.StatusError with code 429). The connection it returns hands
// on the bytes it read to tell the two apart: an HTTP/2 client reads the agent's SETTINGS from it.
func (d *h2Dialer) dial(ctx context.Context) (*firstBytes, error) {
	conn, err := d.dialTLS(ctx, "tcp", d.addr)
	if err != nil {
		return nil, err
	}
	if cs, ok := conn.(interface{ ConnectionState() tls.ConnectionState }); ok &&
		cs.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
		conn.Close()
		return nil, ErrNotHTTP2
	}
	first := &firstBytes{Conn: conn}
	if err := first.peek(ctx); err != nil {
		conn.Close()
		if refused, ok := first.refusal(); ok {
			// The agent accepted the connection and answered 429 at once, in HTTP/1.1: it holds
			// limits.http_max_conns_per_client connections from this address already.
			return nil, api.StatusError{Code: http.StatusTooManyRequests, Body: refused + " (a new HTTP/2 connection to " + d.addr + ")"}
		}
		return nil, fmt.Errorf("consulclient: opening an HTTP/2 connection to %s: %w", d.addr, err)
	}
	return first, nil
}

// RoundTrip sends req on a free stream of one of the pool's connections, dialling one when all are
// full.
func (p *h2Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	if p.h1.Load() || req.URL.Host != p.addr {
		return p.fallback.RoundTrip(req)
	}
	cc, err := p.reserve(req.Context())
	if errors.Is(err, ErrNotHTTP2) {
		return p.fallback.RoundTrip(req)
	}
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	return cc.RoundTrip(req)
}

// reserve returns a connection with a stream reserved for one request.
func (p *h2Pool) reserve(ctx context.Context) (*http2.ClientConn, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errPoolClosed
		}
		if cc := p.reserveLocked(); cc != nil {
			p.mu.Unlock()
			return cc, nil
		}
		d := p.dialing
		if d == nil {
			d = &pendingDial{done: make(chan struct{})}
			p.dialing = d
			p.wg.Add(1)
			go p.dial(d)
		}
		p.mu.Unlock()
		select {
		case <-d.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if d.err != nil {
			return nil, d.err
		}
		if st := d.cc.State(); st.Closed || st.Closing {
			// Closed as soon as it opened: dialling again at once would loop.
			return nil, fmt.Errorf("consulclient: the agent at %s closed a new HTTP/2 connection at once", p.addr)
		}
	}
}

// reserveLocked reserves a stream on the first connection that has one free, dropping the
// connections before it that can take no more requests and hold none. p.mu must be held.
func (p *h2Pool) reserveLocked() *http2.ClientConn {
	kept := p.conns[:0]
	var found *http2.ClientConn
	for i, cc := range p.conns {
		if cc.ReserveNewRequest() {
			found = cc
			kept = append(kept, p.conns[i:]...)
			break
		}
		if st := cc.State(); st.Closed || (st.Closing && st.StreamsActive == 0 && st.StreamsReserved == 0) {
			cc.Close()
			continue
		}
		kept = append(kept, cc)
	}
	clear(p.conns[len(kept):])
	p.conns = kept
	return found
}

// dial opens one connection and adds it to the pool, then wakes the requests that waited for it.
func (p *h2Pool) dial(d *pendingDial) {
	defer p.wg.Done()
	cc, err := p.connect()
	p.mu.Lock()
	if err == nil && p.closed {
		cc.Close()
		err = errPoolClosed
	}
	if err == nil {
		p.conns = append(p.conns, cc)
	}
	if errors.Is(err, ErrNotHTTP2) {
		p.h1.Store(true)
	}
	d.cc, d.err = cc, err
	p.dialing = nil
	p.mu.Unlock()
	close(d.done)
}

// connect dials the agent, checks that it speaks HTTP/2 and waits for its SETTINGS.
func (p *h2Pool) connect() (*http2.ClientConn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	defer cancel()
	first, err := p.dialer.dial(ctx)
	if err != nil {
		return nil, err
	}
	cc, err := p.t.NewClientConn(first)
	if err != nil {
		first.Conn.Close()
		return nil, err
	}
	// The agent's SETTINGS come before its answer to the ping.
	if err := cc.Ping(ctx); err != nil {
		cc.Close()
		return nil, fmt.Errorf("consulclient: opening an HTTP/2 connection to %s: %w", p.addr, err)
	}
	return cc, nil
}

// open returns how many connections the pool holds open.
func (p *h2Pool) open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, cc := range p.conns {
		if !cc.State().Closed {
			n++
		}
	}
	return n
}

// Close closes every connection and waits for a dial in progress; requests in flight fail, and
// requests made later fail with errPoolClosed (or go through the fallback, which the caller closes).
func (p *h2Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.cancel()
	for _, cc := range conns {
		cc.Close()
	}
	p.wg.Wait()
	if t, ok := p.fallback.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	return nil
}

// firstBytes reads what the agent sends first on a new connection before the HTTP/2 client starts,
// and hands it on to the client. An HTTP/2 server sends its SETTINGS frame without waiting for the
// client's preface; a Consul agent that refuses the connection sends an HTTP/1.1 429 instead and
// closes it. Reading first tells the two apart, where writing first would race the agent's close
// and fail with a broken pipe that says nothing.
type firstBytes struct {
	net.Conn
	head []byte // read by peek, not yet handed on
}

// peekWait is how long peek waits for a server that does not speak first (not Consul).
const peekWait = 2 * time.Second

// peek reads the first bytes the agent sends: a frame header, or a refusal's status line.
func (c *firstBytes) peek(ctx context.Context) error {
	deadline := time.Now().Add(peekWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.Conn.SetReadDeadline(deadline)
	defer c.Conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 64)
	for len(c.head) < 9 {
		n, err := c.Conn.Read(buf)
		c.head = append(c.head, buf[:n]...)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && len(c.head) == 0 {
			return nil // a server that waits for the client's preface
		}
		if errors.Is(err, io.EOF) && len(c.head) == 0 {
			// Closed before a byte: the agent's refusal too, when its 429 could not be written
			// within the 10 ms it allows (it times the write from the accept, TLS handshake
			// included).
			c.head = []byte("HTTP/1.1 429 Too Many Requests (the agent closed the connection at once)")
		}
		if err != nil {
			return err
		}
	}
	if _, ok := c.refusal(); ok {
		return errors.New("refused")
	}
	return nil
}

// refusal returns the status line of an HTTP/1.1 answer that came instead of HTTP/2, if it is a 429.
func (c *firstBytes) refusal() (string, bool) {
	if !bytes.HasPrefix(c.head, []byte("HTTP/1.1 429")) {
		return "", false
	}
	line, _, _ := bytes.Cut(c.head, []byte("\r\n"))
	return string(line), true
}

func (c *firstBytes) Read(b []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(b, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// ConnectionState is the TLS state of the connection, for the HTTP/2 client's responses.
func (c *firstBytes) ConnectionState() tls.ConnectionState {
	if cs, ok := c.Conn.(interface{ ConnectionState() tls.ConnectionState }); ok {
		return cs.ConnectionState()
	}
	return tls.ConnectionState{}
}
