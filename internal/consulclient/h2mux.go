package consulclient

// An HTTP/2 client for the GET requests of a process that holds thousands of blocking queries at
// once, driven by events rather than by a goroutine per request.
//
// Pooled's requests share a few HTTP/2 connections, but net/http spends two goroutines on every
// request in flight (the caller blocked in RoundTrip and the HTTP/2 transport's goroutine for the
// stream): 2,000 blocking queries hold 4,000 goroutines that do nothing but wait. Mux holds none per
// request. Each connection has one goroutine, its reader, which first dials the connection and then
// reads its frames; callbacks run on a fixed pool of workers, fed by a queue that never drops and
// never blocks the reader. A request is a muxStream: a small struct that moves from the FIFO of
// requests waiting for a stream, to a connection's list of streams to start, to the connection's
// map of open streams, to the workers' queue.
//
// Connections grow as h2pool's do (see h2pool.go): a request takes a stream on the first connection
// with room (the agent's SETTINGS_MAX_CONCURRENT_STREAMS, 250 for Consul; a connection is offered
// only once the agent's SETTINGS arrived). When every connection is full the request joins the
// FIFO, and one dial is started if none is in flight: requests that find the pool full wait for
// that dial, which takes as many of them as the new connection has streams, and then starts the
// next dial if some still wait. So ceil(requests in flight / 250) connections are open, filled one
// at a time. At MuxMaxConns connections no more are dialled: the requests wait in the FIFO, and as
// a stream ends the next of them takes it. A dial that fails fails every request that waited for
// it; the next request dials again.
//
// Writes to a connection are serialised by its write mutex. HTTP/2 wants new stream ids in
// increasing order on the wire, so ids are given out under that mutex, by the goroutine that writes
// the HEADERS frames (flush): whoever makes work for a connection (Get, a stream that ends and frees
// its place for a waiting request, a new connection) queues it under Mux.mu and then flushes.
// RST_STREAM frames for the streams this client gave up on are queued the same way and written
// before any new HEADERS, so that the agent never counts more than its limit of streams.
//
// Flow control: the client only receives bodies. It advertises a stream window of muxStreamWindow
// and opens the connection window to muxConnWindow at the start, and gives back what it consumed
// with WINDOW_UPDATE frames once half a window has arrived. Bodies are kept whole in memory (the
// callback gets them as a []byte), so flow control here does not bound memory but keeps a large
// answer from stalling.
//
// Locks: Mux.mu guards the scheduling state of the Mux, of its connections and of its streams.
// muxConn.wmu guards a connection's writer (framer writes, HPACK encoder). A goroutine that holds
// wmu may take Mux.mu; none that holds Mux.mu waits for wmu. The workers' queue has its own mutex,
// taken under Mux.mu.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// muxWorkers is how many goroutines run a Mux's callbacks. Callbacks are short (decode, hand
	// on, send the next query); four keep up with thousands of answers a second.
	muxWorkers = 4
	// muxStreamWindow is the flow-control window of each stream (SETTINGS_INITIAL_WINDOW_SIZE):
	// an answer of several MB arrives with one WINDOW_UPDATE per half window.
	muxStreamWindow = 4 << 20
	// muxConnWindow is the flow-control window of each connection.
	muxConnWindow = 64 << 20
	// muxMaxHeaderList bounds the size of an answer's header list (SETTINGS_MAX_HEADER_LIST_SIZE).
	muxMaxHeaderList = 1 << 20
	// muxMaxBody bounds an answer's body: a larger one fails its request with ErrBodyTooLarge
	// rather than exhaust memory.
	muxMaxBody = 256 << 20
	// muxBodyPrealloc bounds the buffer made at once for an answer that announces its length.
	muxBodyPrealloc = 16 << 20
	// muxWriteTimeout is how long a write to a connection may block before the connection is
	// given up as dead.
	muxWriteTimeout = 10 * time.Second
	// muxDefaultIdleTimeout closes a connection that carried no stream for that long, unless the
	// configuration's transport sets IdleConnTimeout.
	muxDefaultIdleTimeout = 90 * time.Second
	// muxUnlimitedStreams is the limit of streams taken for an agent that sets none.
	muxUnlimitedStreams = 1000
	// initialWindowSize is HTTP/2's window of a connection before any WINDOW_UPDATE.
	initialWindowSize = 65535
	// maxStreamID is the largest stream id HTTP/2 allows.
	maxStreamID = 1<<31 - 1
)

var (
	// ErrNotHTTPS says that a configuration does not reach its agent over HTTPS, which a Mux needs:
	// Consul speaks HTTP/2 only on its HTTPS port.
	ErrNotHTTPS = errors.New("consulclient: a Mux needs an agent reached over HTTPS")
	// ErrMuxClosed fails the requests in flight when a Mux closes, and the requests made after.
	ErrMuxClosed = errors.New("consulclient: the Mux is closed")
	// ErrTimeout fails a request whose timeout passed before its answer was complete.
	ErrTimeout = errors.New("consulclient: the request's timeout passed")
	// ErrConnLost fails the requests in flight on a connection that broke or closed.
	ErrConnLost = errors.New("consulclient: the connection to the agent was lost")
	// ErrUnprocessed fails a request the agent said it did not act on (GOAWAY below its stream,
	// REFUSED_STREAM): it can be sent again as it is.
	ErrUnprocessed = errors.New("consulclient: the agent did not process the request")
	// ErrBodyTooLarge fails a request whose answer's body passed muxMaxBody bytes.
	ErrBodyTooLarge = errors.New("consulclient: the answer's body is too large")
)

// MuxMaxConns bounds a Mux's connections to its agent: 8,000 streams at Consul's 250 per
// connection, well below the agent's default limits.http_max_conns_per_client of 200. Requests
// beyond wait in a FIFO, and take streams as others end.
const MuxMaxConns = 32

// errBadPath fails a request whose path could not be sent as an HTTP/2 :path.
var errBadPath = errors.New("consulclient: a request path must begin with / and hold no query, fragment, space or control character")

// RequestError is why a Mux request got no answer. Err is what happened: ErrTimeout, ErrConnLost,
// ErrUnprocessed, ErrMuxClosed, ErrNotHTTP2, ErrBodyTooLarge, the context's error, a
// *StreamResetError, or the error of the dial the request waited for (for which IsConnLimit reports
// whether the agent refused the connection). Test it with errors.Is and errors.As.
type RequestError struct {
	Path string // the request's path, without its query
	Err  error
}

func (e *RequestError) Error() string { return "consulclient: GET " + e.Path + ": " + e.Err.Error() }

func (e *RequestError) Unwrap() error { return e.Err }

// StreamResetError says that the agent ended a request's stream with RST_STREAM before its answer
// was complete.
type StreamResetError struct {
	Code http2.ErrCode
}

func (e *StreamResetError) Error() string {
	return "consulclient: the agent reset the stream (" + e.Code.String() + ")"
}

// Is reports a refused stream as ErrUnprocessed: the agent did not act on the request.
func (e *StreamResetError) Is(target error) bool {
	return target == ErrUnprocessed && e.Code == http2.ErrCodeRefusedStream
}

// Response is an agent's answer.
type Response struct {
	Status int         // the HTTP status, any of them
	Header http.Header // canonical keys, as net/http gives them
	Body   []byte      // whole, as the agent sent it (no Content-Encoding is asked for)
}

// Mux sends GET requests to one Consul agent over HTTP/2 (TLS with ALPN "h2") with callbacks: no
// goroutine per request; one reader goroutine per connection and a fixed pool of workers that run
// callbacks (see the file's comment). It is safe for concurrent use. A request in flight costs a
// muxStream, its path, a timer when it has a timeout and a registration on its context when that
// can end; its answer costs the header map and the body.
type Mux struct {
	dialer      *h2Dialer
	authority   string         // :authority: the agent's address as the configuration names it
	pathPrefix  string         // a reverse proxy's path prefix, from the address
	token       string         // X-Consul-Token; empty: none
	basicAuth   string         // the Authorization header; empty: none
	defaults    []queryDefault // added to a request whose query does not set them
	idleTimeout time.Duration

	dialCtx    context.Context // cancelled by Close: ends a dial in progress
	cancelDial context.CancelFunc
	readers    sync.WaitGroup // each connection's goroutine, from its dial to its last frame
	workers    sync.WaitGroup
	callbacks  callbackQueue

	mu       sync.Mutex
	conns    []*muxConn // connections whose SETTINGS arrived, in dial order
	waiting  streamList // requests without a stream, oldest first
	dialing  bool
	notHTTP2 bool // the agent did not negotiate HTTP/2: every request fails with ErrNotHTTP2
	closed   bool
	// firing counts timer and context functions (expire, abandon) at work; stragglers, those that
	// started after their request had ended otherwise and have not yet seen it. Close waits for
	// both to reach zero, so that none outlives it.
	firing, stragglers int
	quiet              sync.Cond // signalled, under mu, when firing and stragglers reach zero
}

// queryDefault is a query parameter the configuration sets for every request (dc, ns, partition,
// wait), as api.Client sets it: unless the request's own query sets it.
type queryDefault struct {
	key     string
	encoded string // key=value, escaped
}

// NewMux returns a Mux for the agent cfg names (nil: Config("")). cfg must reach the agent over
// HTTPS (else ErrNotHTTPS); its address, TLS configuration and transport's dialer are read as
// NewPooled reads them, and the settings api.Client applies to every request are applied to every
// request the same way: the token (X-Consul-Token, from TokenFile when set, by api.NewClient's
// rules), basic auth (HttpAuth), and the dc, ns, partition and wait query parameters when set. It
// dials nothing: the first request opens the first connection. An error never shows cfg's token.
func NewMux(cfg *api.Config) (*Mux, error) {
	if cfg == nil {
		cfg = Config("")
	}
	// api.NewClient resolves the configuration (defaults from the environment, the token file, a
	// scheme or path prefix in the address) into the copy it is given. The placeholder HTTP
	// client keeps it from building one on the caller's transport, which it would modify.
	resolved := *cfg
	resolved.HttpClient = &http.Client{}
	if _, err := api.NewClient(&resolved); err != nil {
		return nil, Redact(err, cfg.Token)
	}
	if resolved.Scheme != SchemeHTTPS {
		return nil, fmt.Errorf("%w: %s is reached over %s", ErrNotHTTPS, resolved.Address, resolved.Scheme)
	}
	tlsConf := resolved.Transport.TLSClientConfig
	if tlsConf == nil { // as api.NewHttpClient builds it
		var err error
		if tlsConf, err = api.SetupTLSConfig(&resolved.TLSConfig); err != nil {
			return nil, Redact(err, cfg.Token)
		}
	}
	m := &Mux{
		dialer:      newH2Dialer(dialAddress(resolved.Address), tlsConf, resolved.Transport),
		authority:   resolved.Address,
		pathPrefix:  resolved.PathPrefix,
		token:       resolved.Token,
		idleTimeout: resolved.Transport.IdleConnTimeout,
	}
	if m.idleTimeout <= 0 {
		m.idleTimeout = muxDefaultIdleTimeout
	}
	if a := resolved.HttpAuth; a != nil {
		m.basicAuth = "Basic " + base64.StdEncoding.EncodeToString([]byte(a.Username+":"+a.Password))
	}
	for _, d := range []struct{ key, value string }{
		{"dc", resolved.Datacenter}, {"ns", resolved.Namespace}, {"partition", resolved.Partition},
		{"wait", waitParam(resolved.WaitTime)},
	} {
		if d.value != "" {
			m.defaults = append(m.defaults, queryDefault{key: d.key, encoded: d.key + "=" + url.QueryEscape(d.value)})
		}
	}
	m.quiet.L = &m.mu
	m.callbacks.ready.L = &m.callbacks.mu
	m.dialCtx, m.cancelDial = context.WithCancel(context.Background())
	m.workers.Add(muxWorkers)
	for range muxWorkers {
		go m.work()
	}
	return m, nil
}

// dialAddress is the host:port to dial for an address, with HTTPS's port when it names none (as
// net/http dials it).
func dialAddress(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]"), "443")
}

// waitParam is api.Client's wait parameter for a configuration's WaitTime ("" for none).
func waitParam(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	ms := d.Milliseconds()
	if ms == 0 {
		ms = 1
	}
	return strconv.FormatInt(ms, 10) + "ms"
}

// Get sends GET path?query and returns at once: when a stream is free it writes the request to the
// connection (a write the kernel buffers), else it queues the request. path is sent as it is
// (escape its segments with url.PathEscape); the configuration's query parameters are added. cb is
// called exactly once, from one of the Mux's workers (never from Get's caller), with the response
// (any status) or a *RequestError: the dial failed, the agent did not negotiate HTTP/2
// (ErrNotHTTP2), the agent refused the connection (IsConnLimit), the stream was reset, the
// connection was lost or the agent went away before the stream (ErrUnprocessed), timeout passed (0:
// none; ErrTimeout), ctx ended, or the Mux was closed (ErrMuxClosed). The one exception: on a
// closed Mux, whose workers have ended, cb is called with ErrMuxClosed before Get returns. A
// callback may call Get; it must not call Close, nor retry on ErrMuxClosed. Get may be called
// concurrently.
func (m *Mux) Get(ctx context.Context, path string, query url.Values, timeout time.Duration, cb func(*Response, error)) {
	if cb == nil {
		panic("consulclient: Mux.Get with a nil callback")
	}
	s := &muxStream{m: m, ctx: ctx, cb: cb, errPath: path, timeout: timeout}
	valid := validRequestPath(path)
	if valid {
		s.path = m.requestPath(path, query)
	}
	var touched connSet
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cb(nil, &RequestError{Path: path, Err: ErrMuxClosed})
		return
	}
	switch {
	case !valid:
		m.finishLocked(s, nil, errBadPath, 0, &touched)
	case m.notHTTP2:
		m.finishLocked(s, nil, ErrNotHTTP2, 0, &touched)
	case ctx.Err() != nil:
		m.finishLocked(s, nil, context.Cause(ctx), 0, &touched)
	default:
		if timeout > 0 {
			s.timer = time.AfterFunc(timeout, s.expire)
		}
		if ctx.Done() != nil {
			s.stopCtx = context.AfterFunc(ctx, s.abandon)
		}
		var c *muxConn
		if m.waiting.empty() { // else the requests before it come first
			c = m.connWithRoomLocked()
		}
		if c != nil {
			m.startLocked(c, s)
			touched.add(c)
		} else {
			s.state = stateWaiting
			m.waiting.pushBack(s)
			m.ensureDialLocked()
		}
	}
	m.mu.Unlock()
	touched.flush()
}

// validRequestPath reports whether path can be sent as the path of an HTTP/2 :path.
func validRequestPath(path string) bool {
	if !strings.HasPrefix(path, "/") {
		return false
	}
	for i := 0; i < len(path); i++ {
		if b := path[i]; b <= ' ' || b == 0x7f || b == '?' || b == '#' {
			return false
		}
	}
	return true
}

// requestPath is the :path of a request: the prefix, the path, the query and the configuration's
// parameters the query does not set. The caller's query is not modified.
func (m *Mux) requestPath(path string, query url.Values) string {
	q := query.Encode()
	n := len(m.pathPrefix) + len(path) + 1 + len(q)
	for _, d := range m.defaults {
		n += 1 + len(d.encoded)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(m.pathPrefix)
	b.WriteString(path)
	sep := byte('?')
	if q != "" {
		b.WriteByte(sep)
		b.WriteString(q)
		sep = '&'
	}
	for _, d := range m.defaults {
		if !query.Has(d.key) {
			b.WriteByte(sep)
			b.WriteString(d.encoded)
			sep = '&'
		}
	}
	return b.String()
}

// Conns returns how many HTTP/2 connections the Mux holds open to the agent.
func (m *Mux) Conns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.conns {
		if !c.lost {
			n++
		}
	}
	return n
}

// Close fails every request in flight with ErrMuxClosed (their callbacks run), closes the
// connections and returns once every goroutine of the Mux has ended and every callback has
// returned. A dial in progress ends first (within a couple of seconds at worst). Get after Close
// calls its callback with ErrMuxClosed. Close must not be called from a callback; calling it twice
// is harmless.
func (m *Mux) Close() error {
	var touched connSet // unused: the connections close below
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.readers.Wait()
		m.workers.Wait()
		return nil
	}
	m.closed = true
	for s := m.waiting.front(); s != nil; s = m.waiting.front() {
		m.finishLocked(s, nil, ErrMuxClosed, 0, &touched)
	}
	conns := append([]*muxConn(nil), m.conns...)
	for _, c := range conns {
		c.goingAway = true
		for _, s := range c.streams {
			m.finishLocked(s, nil, ErrMuxClosed, 0, &touched)
		}
		for _, s := range c.starts {
			if s.state == stateStarting {
				m.finishLocked(s, nil, ErrMuxClosed, 0, &touched)
			}
		}
	}
	m.mu.Unlock()
	m.cancelDial()
	for _, c := range conns {
		c.conn.Close()
	}
	m.readers.Wait()
	m.mu.Lock()
	for m.firing > 0 || m.stragglers > 0 {
		m.quiet.Wait()
	}
	m.mu.Unlock()
	m.callbacks.close()
	m.workers.Wait()
	return nil
}

// work runs callbacks until the Mux is closed and none is left.
func (m *Mux) work() {
	defer m.workers.Done()
	for s := m.callbacks.pop(); s != nil; s = m.callbacks.pop() {
		s.cb(s.resp, s.err)
	}
}

// streamState is where a request is.
type streamState uint8

const (
	stateNew      streamState = iota
	stateWaiting              // in Mux.waiting
	stateStarting             // in its connection's starts: a stream is reserved, no id yet
	stateOpen                 // in its connection's streams: HEADERS written or being written
	stateDone                 // its callback is queued or has run
)

// endHow says how finishLocked ends a stream.
type endHow uint8

const (
	endReset     endHow = 1 << iota // the agent still counts the stream: send RST_STREAM
	endByTimer                      // called from the stream's timer
	endByContext                    // called from the stream's context's AfterFunc
)

// muxStream is one request, from Get to its callback.
type muxStream struct {
	m       *Mux
	ctx     context.Context
	cb      func(*Response, error)
	path    string // :path, query included
	errPath string // the path for errors
	timeout time.Duration
	timer   *time.Timer
	stopCtx func() bool

	// Guarded by Mux.mu:
	state      streamState
	conn       *muxConn
	id         uint32
	retried    bool       // sent again once after the agent refused it
	prev, next *muxStream // in Mux.waiting; next also in the workers' queue once done

	// Owned by the reader of the stream's connection:
	status        int
	header        http.Header // nil until the final answer's headers arrived
	body          []byte
	contentLength int64  // -1: not announced
	unacked       uint32 // DATA consumed since the last stream WINDOW_UPDATE

	// Set when done, read by the worker that runs the callback:
	resp *Response
	err  error
}

// expire ends a request whose timeout passed; it runs on the timer's goroutine.
func (s *muxStream) expire() {
	s.m.fired(s, fmt.Errorf("%w (%v)", ErrTimeout, s.timeout), endByTimer)
}

// abandon ends a request whose context ended; it runs on the context's AfterFunc goroutine.
func (s *muxStream) abandon() {
	s.m.fired(s, context.Cause(s.ctx), endByContext)
}

// fired ends s for its timer or its context, unless it has ended otherwise.
func (m *Mux) fired(s *muxStream, err error, by endHow) {
	var touched connSet
	m.mu.Lock()
	if s.state == stateDone {
		m.stragglers--
		m.signalQuietLocked()
		m.mu.Unlock()
		return
	}
	m.finishLocked(s, nil, err, by|endReset, &touched)
	m.firing++
	m.mu.Unlock()
	touched.flush()
	m.mu.Lock()
	m.firing--
	m.signalQuietLocked()
	m.mu.Unlock()
}

func (m *Mux) signalQuietLocked() {
	if m.firing == 0 && m.stragglers == 0 {
		m.quiet.Broadcast()
	}
}

// finishLocked ends s with resp or err, wherever it is, frees its stream for the next waiting
// request, and queues its callback. Connections that got work are added to touched, for the caller
// to flush once it has released m.mu.
func (m *Mux) finishLocked(s *muxStream, resp *Response, err error, how endHow, touched *connSet) {
	prev := s.state
	s.state = stateDone
	switch prev {
	case stateWaiting:
		m.waiting.remove(s)
	case stateStarting: // its entry in c.starts is skipped by the flush
		m.streamEndedLocked(s.conn, touched)
	case stateOpen:
		c := s.conn
		delete(c.streams, s.id)
		if how&endReset != 0 && !c.lost {
			c.resets = append(c.resets, s.id)
			touched.add(c)
		}
		m.streamEndedLocked(c, touched)
	}
	// A timer or context function that has started already will find s done: Close waits for it.
	if s.timer != nil && !s.timer.Stop() && how&endByTimer == 0 {
		m.stragglers++
	}
	if s.stopCtx != nil && !s.stopCtx() && how&endByContext == 0 {
		m.stragglers++
	}
	s.conn = nil
	if err != nil {
		s.err = &RequestError{Path: s.errPath, Err: err}
	} else {
		s.resp = resp
	}
	m.callbacks.push(s)
}

// streamEndedLocked frees a stream of c: the next waiting request takes it. A connection that goes
// away closes once its last stream ended; one that carried none for idleTimeout closes too.
func (m *Mux) streamEndedLocked(c *muxConn, touched *connSet) {
	c.reserved--
	if c.reserved == 0 {
		if c.goingAway {
			touched.add(c) // drained: the flush closes it
			return
		}
		c.idleSince = time.Now()
	}
	m.dispatchLocked(touched)
	m.closeIdleLocked(touched)
}

// closeIdleLocked marks the connections idle for longer than idleTimeout as going away, for the
// flush to close them.
func (m *Mux) closeIdleLocked(touched *connSet) {
	var now time.Time
	for _, c := range m.conns {
		if c.goingAway || c.lost || c.reserved > 0 {
			continue
		}
		if now.IsZero() {
			now = time.Now()
		}
		if now.Sub(c.idleSince) >= m.idleTimeout {
			c.goingAway = true
			touched.add(c)
		}
	}
}

// dispatchLocked gives the waiting requests, oldest first, the free streams, then dials if some
// still wait.
func (m *Mux) dispatchLocked(touched *connSet) {
	for !m.waiting.empty() {
		c := m.connWithRoomLocked()
		if c == nil {
			break
		}
		s := m.waiting.front()
		m.waiting.remove(s)
		m.startLocked(c, s)
		touched.add(c)
	}
	m.ensureDialLocked()
}

// connWithRoomLocked returns the first connection that can start a stream, or nil.
func (m *Mux) connWithRoomLocked() *muxConn {
	for _, c := range m.conns {
		if !c.goingAway && !c.lost && c.reserved < c.maxStreams && c.idsLeft() > len(c.starts) {
			return c
		}
	}
	return nil
}

// startLocked reserves a stream of c for s; the next flush of c gives it an id and sends it.
func (m *Mux) startLocked(c *muxConn, s *muxStream) {
	s.state = stateStarting
	s.conn = c
	c.starts = append(c.starts, s)
	c.reserved++
	c.carried = true
}

// ensureDialLocked starts a dial when requests wait, none is in flight and the Mux holds fewer
// than MuxMaxConns connections; at that bound they wait for streams to end.
func (m *Mux) ensureDialLocked() {
	if m.dialing || m.closed || m.notHTTP2 || m.waiting.empty() {
		return
	}
	open := 0
	for _, c := range m.conns {
		if !c.goingAway && !c.lost {
			open++
		}
	}
	if open >= MuxMaxConns {
		return
	}
	m.dialing = true
	m.readers.Add(1)
	go m.dialAndServe()
}

// dialAndServe opens a connection, gives it to the waiting requests, and reads it until it ends.
func (m *Mux) dialAndServe() {
	defer m.readers.Done()
	c, err := m.openConn()
	var touched connSet
	m.mu.Lock()
	m.dialing = false
	if err == nil && m.closed {
		m.mu.Unlock()
		c.conn.Close()
		return
	}
	if err != nil {
		if errors.Is(err, ErrNotHTTP2) {
			m.notHTTP2 = true
		}
		// Every request waiting now waited for this dial.
		for s := m.waiting.front(); s != nil; s = m.waiting.front() {
			m.finishLocked(s, nil, err, 0, &touched)
		}
		m.mu.Unlock()
		touched.flush()
		return
	}
	c.idleSince = time.Now()
	m.conns = append(m.conns, c)
	m.dispatchLocked(&touched)
	m.mu.Unlock()
	touched.flush()
	c.serve()
}

// openConn dials the agent and exchanges the HTTP/2 prefaces: the connection it returns knows the
// agent's SETTINGS, so that it is filled to the agent's limit of streams.
func (m *Mux) openConn() (*muxConn, error) {
	ctx, cancel := context.WithTimeout(m.dialCtx, dialTimeout)
	defer cancel()
	first, err := m.dialer.dial(ctx)
	if err != nil {
		return nil, err
	}
	c := newMuxConn(m, first)
	if err := c.handshake(ctx); err != nil {
		first.Conn.Close()
		return nil, fmt.Errorf("consulclient: opening an HTTP/2 connection to %s: %w", m.dialer.addr, err)
	}
	return c, nil
}

// muxConn is one HTTP/2 connection of a Mux.
type muxConn struct {
	m    *Mux
	conn *firstBytes
	fr   *http2.Framer // ReadFrame: the reader only; writes: under wmu

	wmu          sync.Mutex
	bw           *bufio.Writer
	hbuf         bytes.Buffer
	henc         *hpack.Encoder // writes to hbuf
	peerMaxFrame uint32         // the agent's SETTINGS_MAX_FRAME_SIZE
	sending      []*muxStream   // the streams the flush in progress opened
	resetting    []uint32       // the streams the flush in progress resets

	// Guarded by Mux.mu:
	streams    map[uint32]*muxStream
	starts     []*muxStream // reserved, for the next flush to open
	resets     []uint32     // ended by this client, for the next flush to reset before it opens any
	reserved   int          // streams counted against maxStreams: starting and open
	maxStreams int
	nextID     uint32
	goingAway  bool // no new streams: GOAWAY, ids exhausted, idle, or the Mux closing
	goAwayCode http2.ErrCode
	lost       bool      // its reader has ended
	carried    bool      // it has been given a stream
	idleSince  time.Time // when reserved last fell to zero

	// The reader's own:
	recvWindow int64  // what the agent may still send on the connection
	unacked    uint32 // DATA consumed since the last connection WINDOW_UPDATE
}

func newMuxConn(m *Mux, first *firstBytes) *muxConn {
	c := &muxConn{m: m, conn: first, bw: bufio.NewWriterSize(first, 16<<10),
		peerMaxFrame: 16384, streams: make(map[uint32]*muxStream), nextID: 1,
		recvWindow: initialWindowSize}
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(first, 16<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = muxMaxHeaderList
	c.fr.SetMaxReadFrameSize(16384) // HTTP/2's default, which this client does not raise
	return c
}

// handshake sends the client preface and settings, opens the connection window, and reads the
// agent's SETTINGS (the first frame a server sends), which it acknowledges.
func (c *muxConn) handshake(ctx context.Context) (err error) {
	deadline, _ := ctx.Deadline()
	c.conn.SetDeadline(deadline)
	// Close cancels ctx: it interrupts the handshake by the deadline. The function is waited for,
	// so that it never touches a connection in use, nor outlives Close.
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetDeadline(time.Unix(1, 0))
		close(interrupted)
	})
	defer func() {
		if !stop() {
			<-interrupted
			if err == nil {
				err = ctx.Err()
			}
		}
		c.conn.SetDeadline(time.Time{})
	}()
	c.bw.WriteString(http2.ClientPreface)
	c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: muxStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: muxMaxHeaderList},
	)
	c.fr.WriteWindowUpdate(0, muxConnWindow-initialWindowSize)
	c.recvWindow = muxConnWindow
	if err := c.bw.Flush(); err != nil {
		return err
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("the agent's first frame is %v, not SETTINGS", f.Header().Type)
	}
	c.maxStreams = muxUnlimitedStreams // unless the agent says otherwise
	return c.applySettings(sf)
}

// applySettings applies the agent's SETTINGS and acknowledges them. The caller dispatches the
// waiting requests if the limit of streams rose.
func (c *muxConn) applySettings(f *http2.SettingsFrame) error {
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return err
	}
	if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
		c.m.mu.Lock()
		c.maxStreams = int(min(v, muxUnlimitedStreams))
		c.m.mu.Unlock()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
		c.peerMaxFrame = v
	}
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		c.henc.SetMaxDynamicTableSizeLimit(v)
	}
	c.fr.WriteSettingsAck()
	return c.flushWriterLocked()
}

// flushWriterLocked sends what the framer wrote; c.wmu must be held. A write that fails or blocks
// past muxWriteTimeout closes the connection: its reader then fails its streams.
func (c *muxConn) flushWriterLocked() error {
	c.conn.SetWriteDeadline(time.Now().Add(muxWriteTimeout))
	err := c.bw.Flush()
	if err != nil {
		c.conn.Close()
	}
	return err
}

// idsLeft returns how many stream ids the connection has left; Mux.mu must be held.
func (c *muxConn) idsLeft() int {
	if c.nextID > maxStreamID {
		return 0
	}
	return int((maxStreamID-c.nextID)/2) + 1
}

// flush writes the connection's queued work: RST_STREAM for the streams this client ended, then
// HEADERS for the streams it starts, which get their ids here, in the order they go on the wire. A
// connection that goes away and carries no stream any more is closed.
func (c *muxConn) flush() {
	m := c.m
	c.wmu.Lock()
	defer c.wmu.Unlock()
	m.mu.Lock()
	c.resetting = append(c.resetting[:0], c.resets...)
	c.resets = c.resets[:0]
	c.sending = c.sending[:0]
	for _, s := range c.starts {
		if s.state == stateStarting {
			s.id, c.nextID = c.nextID, c.nextID+2
			s.state = stateOpen
			c.streams[s.id] = s
			c.sending = append(c.sending, s)
		}
	}
	clear(c.starts)
	c.starts = c.starts[:0]
	if c.idsLeft() == 0 {
		c.goingAway = true
	}
	closing := c.goingAway && c.reserved == 0 && !c.lost
	m.mu.Unlock()

	for _, id := range c.resetting {
		c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	for _, s := range c.sending {
		c.writeHeaders(s)
	}
	clear(c.sending)
	if closing {
		c.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	}
	if c.flushWriterLocked() == nil && closing {
		c.conn.Close()
	}
}

// writeHeaders writes the HEADERS (and CONTINUATION) frames of s's request; c.wmu must be held.
func (c *muxConn) writeHeaders(s *muxStream) {
	m := c.m
	c.hbuf.Reset()
	c.henc.WriteField(hpack.HeaderField{Name: ":method", Value: http.MethodGet})
	c.henc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "https"})
	c.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: m.authority})
	c.henc.WriteField(hpack.HeaderField{Name: ":path", Value: s.path})
	// Secrets are never indexed: they stay out of the HPACK tables on both sides.
	if m.token != "" {
		c.henc.WriteField(hpack.HeaderField{Name: "x-consul-token", Value: m.token, Sensitive: true})
	}
	if m.basicAuth != "" {
		c.henc.WriteField(hpack.HeaderField{Name: "authorization", Value: m.basicAuth, Sensitive: true})
	}
	block := c.hbuf.Bytes()
	for first := true; first || len(block) > 0; first = false {
		frag := block[:min(len(block), int(c.peerMaxFrame))]
		block = block[len(frag):]
		if first {
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: frag, EndStream: true, EndHeaders: len(block) == 0})
		} else {
			c.fr.WriteContinuation(s.id, len(block) == 0, frag)
		}
	}
}

// serve reads the connection's frames until it ends, then drops it and fails its streams.
func (c *muxConn) serve() {
	err := c.readFrames()
	c.conn.Close()
	m := c.m
	var touched connSet
	m.mu.Lock()
	c.lost = true
	for i, cc := range m.conns {
		if cc == c {
			m.conns = slices.Delete(m.conns, i, i+1)
			break
		}
	}
	var cause error
	switch {
	case m.closed:
		cause = ErrMuxClosed
	case c.goAwayCode != http2.ErrCodeNo:
		cause = fmt.Errorf("%w (GOAWAY %v, then %v)", ErrConnLost, c.goAwayCode, err)
	default:
		cause = fmt.Errorf("%w (%v)", ErrConnLost, err)
	}
	for _, s := range c.streams {
		m.finishLocked(s, nil, cause, 0, &touched)
	}
	for _, s := range c.starts {
		if s.state == stateStarting { // never sent
			m.finishLocked(s, nil, fmt.Errorf("%w: %w", ErrUnprocessed, cause), 0, &touched)
		}
	}
	clear(c.starts)
	c.starts = nil
	if !c.carried {
		// It ended before it was given a request: dialling again at once could loop.
		for s := m.waiting.front(); s != nil; s = m.waiting.front() {
			m.finishLocked(s, nil, cause, 0, &touched)
		}
	}
	m.ensureDialLocked()
	m.mu.Unlock()
	touched.flush()
}

// readFrames reads and handles frames until the connection fails.
func (c *muxConn) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) { // a malformed answer on one stream; the connection goes on
				c.failStream(c.lookup(se.StreamID), fmt.Errorf("a malformed answer: %w", se))
				continue
			}
			return err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			c.onHeaders(f)
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.RSTStreamFrame:
			c.onReset(f)
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.PingFrame:
			if !f.IsAck() {
				c.wmu.Lock()
				c.fr.WritePing(true, f.Data)
				err = c.flushWriterLocked()
				c.wmu.Unlock()
			}
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.PushPromiseFrame:
			return errors.New("the agent pushed a stream, which this client disabled")
		}
		// WINDOW_UPDATE is ignored: the client sends no DATA. PRIORITY and unknown frames too.
		if err != nil {
			return err
		}
	}
}

// lookup returns the open stream id, or nil for one this client ended already.
func (c *muxConn) lookup(id uint32) *muxStream {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	return c.streams[id]
}

// end ends s, if it is still open, with resp or err.
func (c *muxConn) end(s *muxStream, resp *Response, err error, how endHow) {
	m := c.m
	var touched connSet
	m.mu.Lock()
	if s.state == stateOpen && s.conn == c {
		m.finishLocked(s, resp, err, how, &touched)
	}
	m.mu.Unlock()
	touched.flush()
}

// failStream ends s (nil: nothing) with err and resets it: its answer is unusable.
func (c *muxConn) failStream(s *muxStream, err error) {
	if s != nil {
		c.end(s, nil, err, endReset)
	}
}

func (c *muxConn) onHeaders(f *http2.MetaHeadersFrame) {
	// The header block was decoded all the same, which keeps HPACK in step with the agent.
	s := c.lookup(f.StreamID)
	if s == nil {
		return
	}
	if f.Truncated {
		c.failStream(s, errors.New("the answer's header list is too large"))
		return
	}
	if s.header != nil { // trailers
		if !f.StreamEnded() {
			c.failStream(s, errors.New("the agent sent a second header block without ending the stream"))
			return
		}
		c.complete(s)
		return
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 || status == http.StatusSwitchingProtocols {
		c.failStream(s, fmt.Errorf("the answer's status %q is not valid", f.PseudoValue("status")))
		return
	}
	if status < 200 {
		return // an interim answer; the final one follows
	}
	fields := f.RegularFields()
	s.status = status
	s.header = make(http.Header, len(fields))
	values := make([]string, len(fields)) // one array for the single values, as net/http does
	for i, hf := range fields {
		key := canonicalHeaderKey(hf.Name)
		if vv := s.header[key]; vv != nil {
			s.header[key] = append(vv, hf.Value)
			continue
		}
		values[i] = hf.Value
		s.header[key] = values[i : i+1 : i+1]
	}
	s.contentLength = -1
	if v := s.header.Get("Content-Length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			c.failStream(s, fmt.Errorf("the answer's Content-Length %q is not valid", v))
			return
		}
		if n > muxMaxBody {
			c.failStream(s, fmt.Errorf("%w (%d bytes announced)", ErrBodyTooLarge, n))
			return
		}
		s.contentLength = n
		s.body = make([]byte, 0, min(n, muxBodyPrealloc))
	}
	if f.StreamEnded() {
		c.complete(s)
	}
}

func (c *muxConn) onData(f *http2.DataFrame) error {
	// Flow control counts the whole frame, padding included, whether its stream is still open or
	// not: the agent sent it against the connection's window either way.
	n := f.Length
	c.recvWindow -= int64(n)
	if c.recvWindow < 0 {
		return errors.New("the agent sent DATA beyond the connection's flow-control window")
	}
	c.unacked += n
	var connUpdate, streamUpdate uint32
	if c.unacked >= muxConnWindow/2 {
		connUpdate, c.unacked = c.unacked, 0
		c.recvWindow += int64(connUpdate)
	}
	s := c.lookup(f.StreamID)
	switch {
	case s == nil:
	case s.header == nil:
		c.failStream(s, errors.New("the agent sent DATA before the answer's headers"))
		s = nil
	case len(s.body)+len(f.Data()) > muxMaxBody:
		c.failStream(s, ErrBodyTooLarge)
		s = nil
	default:
		s.body = append(s.body, f.Data()...)
		if !f.StreamEnded() {
			if s.unacked += n; s.unacked >= muxStreamWindow/2 {
				streamUpdate, s.unacked = s.unacked, 0
			}
		}
	}
	if connUpdate > 0 || streamUpdate > 0 {
		c.wmu.Lock()
		if connUpdate > 0 {
			c.fr.WriteWindowUpdate(0, connUpdate)
		}
		if streamUpdate > 0 {
			c.fr.WriteWindowUpdate(f.StreamID, streamUpdate)
		}
		err := c.flushWriterLocked()
		c.wmu.Unlock()
		if err != nil {
			return err
		}
	}
	if s != nil && f.StreamEnded() {
		c.complete(s)
	}
	return nil
}

// complete ends s with its answer.
func (c *muxConn) complete(s *muxStream) {
	if s.contentLength >= 0 && int64(len(s.body)) != s.contentLength {
		c.failStream(s, fmt.Errorf("the answer's body has %d bytes, its Content-Length says %d", len(s.body), s.contentLength))
		return
	}
	c.end(s, &Response{Status: s.status, Header: s.header, Body: s.body}, nil, 0)
}

func (c *muxConn) onReset(f *http2.RSTStreamFrame) {
	s := c.lookup(f.StreamID)
	if s == nil {
		return
	}
	m := c.m
	var touched connSet
	m.mu.Lock()
	switch {
	case s.state != stateOpen || s.conn != c:
	case !s.retried && s.header == nil && (f.ErrCode == http2.ErrCodeRefusedStream || f.ErrCode == http2.ErrCodeProtocol):
		// Refused before any answer: the Go server behind Consul counts a stream until it has
		// written its last frame, which a client can read before the server counts it closed, so
		// that a stream started at once in its place can find the server over its limit. The
		// request was not processed; it goes first in line, once.
		s.retried = true
		delete(c.streams, s.id)
		s.state, s.conn, s.id = stateWaiting, nil, 0
		m.waiting.pushFront(s)
		m.streamEndedLocked(c, &touched)
	default:
		m.finishLocked(s, nil, &StreamResetError{Code: f.ErrCode}, 0, &touched)
	}
	m.mu.Unlock()
	touched.flush()
}

func (c *muxConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := c.applySettings(f); err != nil {
		return err
	}
	m := c.m
	var touched connSet
	m.mu.Lock()
	m.dispatchLocked(&touched) // the limit of streams may have risen
	m.mu.Unlock()
	touched.flush()
	return nil
}

// onGoAway stops new streams on the connection and fails those the agent will not process.
func (c *muxConn) onGoAway(f *http2.GoAwayFrame) {
	m := c.m
	var touched connSet
	m.mu.Lock()
	c.goingAway = true
	c.goAwayCode = f.ErrCode
	var unprocessed error
	for id, s := range c.streams {
		if id > f.LastStreamID {
			if unprocessed == nil {
				unprocessed = fmt.Errorf("%w (GOAWAY %v past stream %d)", ErrUnprocessed, f.ErrCode, f.LastStreamID)
			}
			m.finishLocked(s, nil, unprocessed, 0, &touched)
		}
	}
	for _, s := range c.starts {
		if s.state == stateStarting {
			if unprocessed == nil {
				unprocessed = fmt.Errorf("%w (GOAWAY %v past stream %d)", ErrUnprocessed, f.ErrCode, f.LastStreamID)
			}
			m.finishLocked(s, nil, unprocessed, 0, &touched)
		}
	}
	if c.reserved == 0 {
		touched.add(c) // nothing left to wait for: the flush closes it
	}
	m.ensureDialLocked() // the requests waiting need another connection now
	m.mu.Unlock()
	touched.flush()
}

// connSet is the connections a locked section gave work to, for its caller to flush once it has
// released Mux.mu. Almost always one: its first entry costs no allocation.
type connSet struct {
	first *muxConn
	more  []*muxConn
}

func (t *connSet) add(c *muxConn) {
	switch {
	case t.first == nil:
		t.first = c
	case t.first == c:
	default:
		if !slices.Contains(t.more, c) {
			t.more = append(t.more, c)
		}
	}
}

func (t *connSet) flush() {
	if t.first != nil {
		t.first.flush()
	}
	for _, c := range t.more {
		c.flush()
	}
}

// streamList is a FIFO of streams linked through their prev and next fields: no allocation, and a
// request that ends while it waits leaves from the middle in constant time.
type streamList struct{ head, tail *muxStream }

func (l *streamList) empty() bool { return l.head == nil }

func (l *streamList) front() *muxStream { return l.head }

func (l *streamList) pushBack(s *muxStream) {
	s.prev, s.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = s
	} else {
		l.head = s
	}
	l.tail = s
}

func (l *streamList) pushFront(s *muxStream) {
	s.prev, s.next = nil, l.head
	if l.head != nil {
		l.head.prev = s
	} else {
		l.tail = s
	}
	l.head = s
}

func (l *streamList) remove(s *muxStream) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		l.head = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		l.tail = s.prev
	}
	s.prev, s.next = nil, nil
}

// callbackQueue holds the streams whose callbacks are due, for the workers. It never drops one and
// never blocks the goroutine that pushes.
type callbackQueue struct {
	mu         sync.Mutex
	ready      sync.Cond // L is mu
	head, tail *muxStream
	closed     bool
}

func (q *callbackQueue) push(s *muxStream) {
	q.mu.Lock()
	s.next = nil
	if q.tail != nil {
		q.tail.next = s
	} else {
		q.head = s
	}
	q.tail = s
	q.mu.Unlock()
	q.ready.Signal()
}

// pop returns the next stream, waiting for one; nil once the queue is closed and empty.
func (q *callbackQueue) pop() *muxStream {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head == nil && !q.closed {
		q.ready.Wait()
	}
	s := q.head
	if s != nil {
		q.head = s.next
		if q.head == nil {
			q.tail = nil
		}
		s.next = nil
	}
	return s
}

func (q *callbackQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.ready.Broadcast()
}

// canonicalHeaderKey is http.CanonicalHeaderKey without its allocation for the headers Consul
// sends (HTTP/2 sends them in lower case).
func canonicalHeaderKey(name string) string {
	if k, ok := consulHeaderKeys[name]; ok {
		return k
	}
	return http.CanonicalHeaderKey(name)
}

var consulHeaderKeys = func() map[string]string {
	keys := map[string]string{}
	for _, k := range []string{
		"Content-Type", "Content-Length", "Content-Encoding", "Date", "Vary", "Cache-Control", "Age",
		"X-Consul-Index", "X-Consul-Knownleader", "X-Consul-Lastcontact", "X-Consul-Effective-Consistency",
		"X-Consul-Query-Backend", "X-Consul-Default-Acl-Policy", "X-Consul-Results-Filtered-By-Acls",
		"X-Consul-Translate-Addresses", "X-Cache", "X-Consul-Contenthash",
	} {
		keys[strings.ToLower(k)] = http.CanonicalHeaderKey(k)
	}
	return keys
}()
