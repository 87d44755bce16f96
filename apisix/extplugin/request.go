package extplugin

import (
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"unsafe"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"

	"github.com/graylane/graylane/gray"
)

// request is the core's view of one runner request, read through the runner's public
// pkgHTTP.Request interface only. It lives for one Decide call: the strings it returns may point
// into the runner's message (the path) or into its own scratch buffer (the query), and the core
// does not keep them.
//
// Headers are read from Header().View(). The runner builds that map on the first Header() call of
// a request (each header copied into two strings, then the whole map cloned, so that its answer can
// carry the differences); reading it is the only way its public API offers to see a header without
// a round trip to APISIX (Var). Arguments come from Args(), which the runner builds the same way,
// and only when a rule asks for the query.
type request struct {
	r   pkgHTTP.Request
	hdr http.Header // r.Header().View(): read, never written

	hideTag   string // lower-case lane header to hide (an untrusted client's), or ""
	query     []byte // RawQuery's scratch buffer, reused across requests
	queryDone bool
}

var _ gray.Request = (*request)(nil)

var requestPool = sync.Pool{New: func() any { return new(request) }}

func (q *request) bind(r pkgHTTP.Request) {
	q.r = r
	q.hdr = r.Header().View()
}

func (q *request) release() {
	q.r, q.hdr, q.hideTag, q.queryDone = nil, nil, "", false
	requestPool.Put(q)
}

// Header implements gray.Request.
func (q *request) Header(k gray.HeaderKey) (string, bool) {
	if q.hideTag != "" && k.Lower() == q.hideTag {
		return "", false
	}
	v, n := q.header(k)
	return v, n > 0
}

// header returns the first value of a header and how many times it occurs.
func (q *request) header(k gray.HeaderKey) (string, int) {
	vs := q.hdr[k.Canonical()]
	if len(vs) == 0 {
		return "", 0
	}
	return vs[0], len(vs)
}

// Path implements gray.Request. The bytes belong to the runner's message, alive for the call.
func (q *request) Path() string { return bytesString(q.r.Path()) }

// RawQuery implements gray.Request. APISIX hands the arguments decoded; they are escaped back
// into a query string, once per request and only when a rule asks for the query.
func (q *request) RawQuery() string {
	if !q.queryDone {
		q.query = appendQuery(q.query[:0], q.r.Args())
		q.queryDone = true
	}
	return bytesString(q.query)
}

// Method implements gray.Request.
func (q *request) Method() string { return q.r.Method() }

// ClientIP implements gray.Request: the source address APISIX reports, IPv4 unmapped.
func (q *request) ClientIP() netip.Addr {
	a, _ := netip.AddrFromSlice(q.r.SrcIP())
	return a.Unmap()
}

// setHeader sets one request header to value through the runner's Header(), which records the
// change for the runner's answer to APISIX.
func setHeader(r pkgHTTP.Request, canonical, value string) { r.Header().Set(canonical, value) }

// delHeader removes one request header through the runner's Header(), which records the removal
// for the runner's answer to APISIX.
func delHeader(r pkgHTTP.Request, canonical string) { r.Header().Del(canonical) }

// bytesString views b as a string without copying. It is used on the path the runner hands out
// (its message, which does not change during the call) and on the view's own query buffer
// (rewritten only for the next request): both outlive every string the core reads during Decide,
// and the core keeps none. Copying instead would cost an allocation per request that a rule reads.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// appendArg appends name=value in raw query form. Only the bytes that change how a query splits or
// decodes are escaped, so that the core's query reading gets back exactly the values APISIX sent.
func appendArg(buf []byte, name, value string) []byte {
	if len(buf) > 0 {
		buf = append(buf, '&')
	}
	buf = appendEscaped(buf, name)
	buf = append(buf, '=')
	return appendEscaped(buf, value)
}

// appendQuery escapes args into raw query form.
func appendQuery(buf []byte, args url.Values) []byte {
	for k, vs := range args {
		for _, v := range vs {
			buf = appendArg(buf, k, v)
		}
	}
	return buf
}

func appendEscaped(buf []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', '+', '&', '=', '#', ';':
			buf = append(buf, '%', hex[c>>4], hex[c&15])
		case ' ':
			buf = append(buf, '+')
		default:
			buf = append(buf, c)
		}
	}
	return buf
}
