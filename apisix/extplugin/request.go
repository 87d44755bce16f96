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

// request is the core's view of a runner request. It reads what arrived with the call: the runner's
// header map (canonical names, as the runner builds it), the path and method from the message, the
// source address. It lives for one Decide call: the strings it returns may point into the runner's
// message buffer or into its own scratch buffer, and the core does not keep them.
type request struct {
	r         pkgHTTP.Request
	hdr       http.Header
	query     []byte // RawQuery's scratch buffer, reused across requests
	queryDone bool
}

var _ gray.Request = (*request)(nil)

var requestPool = sync.Pool{New: func() any { return new(request) }}

// Header implements gray.Request.
func (q *request) Header(k gray.HeaderKey) (string, bool) {
	if v := q.hdr[k.Canonical()]; len(v) > 0 {
		return v[0], true
	}
	return "", false
}

// Path implements gray.Request. The bytes belong to the runner's message, alive for the call.
func (q *request) Path() string { return bytesString(q.r.Path()) }

// RawQuery implements gray.Request. The runner hands the arguments decoded, as url.Values; they are
// escaped back into a query string, once per request and only when a rule asks for the query.
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

// bytesString views b as a string without copying; b must not change while the string is used.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// appendQuery escapes args into raw query form. Only the bytes that change how a query splits or
// decodes are escaped, so that the core's query reading gets back exactly the values APISIX sent.
func appendQuery(buf []byte, args url.Values) []byte {
	for k, vs := range args {
		for _, v := range vs {
			if len(buf) > 0 {
				buf = append(buf, '&')
			}
			buf = appendEscaped(buf, k)
			buf = append(buf, '=')
			buf = appendEscaped(buf, v)
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
