package selector

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/go-kratos/kratos/v2/metadata"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	khttp "github.com/go-kratos/kratos/v2/transport/http"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/graylane/graylane/gray"
)

// call is the gray.Request view of one outgoing call. It reads, without copying, what the call's
// context holds: the outgoing request (Kratos' client transport; for streams also the gRPC outgoing
// metadata and Kratos client metadata) and, when the call is made inside a handler, the incoming
// request (Kratos' server transport). Each context lookup is made once, when first needed. The
// package documentation has the table of what each kind of call shows.
type call struct {
	ctx context.Context

	out      side // the outgoing call, from Kratos' client transport
	in       side // the incoming request, from Kratos' server transport
	kratosMD metadata.Metadata
	outMD    grpcmd.MD
	tagKey   string // lower case
	tagValue string

	// The small fields together, so that a call record stays in a smaller size class.
	looked   uint8 // which lookups were made
	tagWhere where
	// streamMD: read gRPC outgoing metadata too. It is on for streams, whose Kratos transport
	// header is empty; reading it copies the metadata, so unary calls read the transport header,
	// into which Kratos copies what client middleware set.
	streamMD bool
	// clientOnly: the client transport's headers are all the call shows (a unary gRPC call made
	// outside a handler, through Kratos' gRPC transport); a header not there is nowhere. Such a
	// call is decided through outgoingHeaders, which reads that transport header and nothing else.
	clientOnly bool
}

type kind uint8

const (
	kindNone kind = iota
	kindGRPC
	kindHTTP
)

const (
	lookedClient uint8 = 1 << iota
	lookedServer
	lookedKratosMD
	lookedTag
)

// where says where a header was found.
type where uint8

const (
	foundNowhere where = iota
	foundOutgoing
	foundElsewhere // Kratos client metadata or the incoming request: not yet on the outgoing call
)

func (c *call) reset(ctx context.Context, stream bool) { *c = call{ctx: ctx, streamMD: stream} }

// begin starts the view of a call where the call starts (GRPC's interceptor, the StrictErrors
// middleware): it looks up both transports there, where the context chain is shorter than in the
// picker, and once per call however often the call is picked. c must be new: it is not reset.
func (c *call) begin(ctx context.Context, stream bool) {
	c.ctx, c.streamMD = ctx, stream
	c.lookClient()
	c.lookServer()
	c.clientOnly = c.out.kratosGRPC && !stream && c.in.kind == kindNone
}

// repick forgets what an earlier pick of the same call read from the lane tag: a retried pick
// decides again (with the tag key of the snapshot it is given).
func (c *call) repick() {
	c.looked &^= lookedTag
	c.tagKey, c.tagValue, c.tagWhere = "", "", foundNowhere
}

func (c *call) lookClient() {
	if c.looked&lookedClient != 0 {
		return
	}
	c.looked |= lookedClient
	if tr, ok := transport.FromClientContext(c.ctx); ok {
		c.out.look(tr)
	}
}

func (c *call) lookServer() {
	if c.looked&lookedServer != 0 {
		return
	}
	c.looked |= lookedServer
	if tr, ok := transport.FromServerContext(c.ctx); ok {
		c.in.look(tr)
	}
}

// side is what one Kratos transport of a call shows: the outgoing call's or the incoming request's.
type side struct {
	req    *http.Request    // HTTP: the request
	header transport.Header // the transport's headers when there is no request
	op     string           // gRPC: the full method name
	kind   kind
	// kratosGRPC: the transport is Kratos' gRPC transport, whose header holds the call's
	// headers under lower-case keys.
	kratosGRPC bool
}

func (s *side) look(tr transport.Transporter) {
	if t, ok := tr.(khttp.Transporter); ok {
		s.kind, s.req = kindHTTP, t.Request()
		if s.req == nil {
			s.header = tr.RequestHeader()
		}
		return
	}
	s.kind = kindHTTP
	if tr.Kind() == transport.KindGRPC {
		s.kind, s.op = kindGRPC, tr.Operation()
	}
	_, s.kratosGRPC = tr.(*kgrpc.Transport)
	s.header = tr.RequestHeader()
}

// values reads a header: from the HTTP request directly, else through the transport's header.
func (s *side) values(key gray.HeaderKey) []string {
	switch {
	case s.req != nil:
		return s.req.Header[key.Canonical()]
	case s.header != nil: // in the spelling its transport keeps, so that no key is converted
		if s.kind == kindGRPC {
			return s.header.Values(key.Lower())
		}
		return s.header.Values(key.Canonical())
	}
	return nil
}

func (c *call) lookKratosMD() metadata.Metadata {
	if c.looked&lookedKratosMD == 0 {
		c.looked |= lookedKratosMD
		c.kratosMD, _ = metadata.FromClientContext(c.ctx)
	}
	return c.kratosMD
}

// Header implements gray.Request: the outgoing call's headers first, then the incoming request's.
func (c *call) Header(key gray.HeaderKey) (string, bool) {
	if c.looked&lookedTag != 0 && key.Lower() == c.tagKey {
		return c.tagValue, c.tagWhere != foundNowhere
	}
	v, w := c.anywhere(key)
	return v, w != foundNowhere
}

// outgoingHeaders is the request view of a call whose headers are all in its client transport's
// header (clientOnly): Header reads that header and nothing else; the rest (path, method) comes
// from the call.
type outgoingHeaders struct{ *call }

func (v outgoingHeaders) Header(key gray.HeaderKey) (string, bool) {
	return first(v.out.values(key))
}

// tag returns the call's lane tag and where it was found, and remembers them for Header.
func (c *call) tag(key gray.HeaderKey) (string, where) {
	if c.looked&lookedTag == 0 || key.Lower() != c.tagKey {
		c.tagValue, c.tagWhere = c.anywhere(key)
		c.tagKey = key.Lower()
		c.looked |= lookedTag
	}
	if c.tagValue == "" {
		return "", foundNowhere
	}
	return c.tagValue, c.tagWhere
}

// anywhere reads a header wherever the call shows one: the client transport, then beyond it.
func (c *call) anywhere(key gray.HeaderKey) (string, where) {
	c.lookClient()
	if v, ok := first(c.out.values(key)); ok {
		return v, foundOutgoing
	}
	return c.beyondClient(key)
}

// beyondClient reads what the client transport does not show: a stream's outgoing metadata, Kratos
// client metadata, and the incoming request.
func (c *call) beyondClient(key gray.HeaderKey) (string, where) {
	if c.streamMD || c.out.kind == kindNone {
		if v, ok := c.outgoing(key.Lower()); ok {
			return v, foundOutgoing
		}
		// Kratos client metadata: a unary call's and an HTTP Invoke's reach the transport
		// header through metadata.Client(); a stream's are not sent by Kratos at all.
		if md := c.lookKratosMD(); md != nil {
			if v, ok := first(md[key.Lower()]); ok {
				return v, foundElsewhere
			}
		}
	}
	c.lookServer()
	if v, ok := first(c.in.values(key)); ok {
		return v, foundElsewhere
	}
	return "", foundNowhere
}

func first(vs []string) (string, bool) {
	if len(vs) == 0 {
		return "", false
	}
	return vs[0], true
}

// outgoing reads the gRPC outgoing metadata. FromOutgoingContext copies it: the copy is made once
// per call, and only for streams and calls without a Kratos transport.
func (c *call) outgoing(lower string) (string, bool) {
	if c.outMD == nil {
		c.outMD, _ = grpcmd.FromOutgoingContext(c.ctx)
		if c.outMD == nil {
			c.outMD = grpcmd.MD{}
		}
	}
	return first(c.outMD[lower])
}

// Path implements gray.Request: the incoming request's path when the call is made inside a handler,
// else the outgoing call's (HTTP Invoke: its URL path; gRPC: the full method name).
func (c *call) Path() string {
	c.lookServer()
	switch {
	case c.in.req != nil:
		return c.in.req.URL.Path
	case c.in.kind == kindGRPC:
		return c.in.op
	}
	c.lookClient()
	if c.out.req != nil {
		return c.out.req.URL.Path
	}
	return c.out.op
}

// RawQuery implements gray.Request (HTTP only).
func (c *call) RawQuery() string {
	c.lookServer()
	if c.in.req != nil {
		return c.in.req.URL.RawQuery
	}
	if c.in.kind == kindNone {
		c.lookClient()
		if c.out.req != nil {
			return c.out.req.URL.RawQuery
		}
	}
	return ""
}

// Method implements gray.Request: "POST" for gRPC.
func (c *call) Method() string {
	c.lookServer()
	switch {
	case c.in.req != nil:
		return c.in.req.Method
	case c.in.kind == kindGRPC:
		return http.MethodPost
	}
	c.lookClient()
	switch {
	case c.out.req != nil:
		return c.out.req.Method
	case c.out.kind == kindGRPC:
		return http.MethodPost
	}
	return ""
}

var forwardedFor = gray.NewHeaderKey("X-Forwarded-For")

// ClientIP implements gray.Request: the incoming request's client, from the first X-Forwarded-For
// entry, else its peer address. An outgoing call made outside a handler has no client address.
func (c *call) ClientIP() netip.Addr {
	c.lookServer()
	if c.in.req == nil && c.in.header == nil {
		return netip.Addr{}
	}
	fwd := c.in.values(forwardedFor)
	if len(fwd) > 0 {
		v, _, _ := strings.Cut(fwd[0], ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(v)); err == nil {
			return a.Unmap()
		}
	}
	if c.in.req != nil {
		if ap, err := netip.ParseAddrPort(c.in.req.RemoteAddr); err == nil {
			return ap.Addr().Unmap()
		}
		return netip.Addr{}
	}
	if p, ok := peer.FromContext(c.ctx); ok {
		if tcp, ok := p.Addr.(*net.TCPAddr); ok {
			if a, ok := netip.AddrFromSlice(tcp.IP); ok {
				return a.Unmap()
			}
		}
	}
	return netip.Addr{}
}
