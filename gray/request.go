package gray

import (
	"net/netip"
	"net/textproto"
	"strings"
)

// Request is the view of one request that the decision reads. Each enforcer implements it over its
// own request type (a Kratos transport, an APISIX runner request) without copying the request.
// The methods are called on the request path: they should not allocate.
type Request interface {
	// Header returns the first value of a header, and whether the header is present. Lookups are
	// case-insensitive; key carries the name in both lower-case and canonical form so that the
	// implementation need not convert it. For the lane tag, an implementation may also look in
	// the places its framework propagates metadata to.
	Header(key HeaderKey) (string, bool)
	// Path is the request path without the query (for gRPC, the full method name).
	Path() string
	// RawQuery is the query string without '?', still escaped; empty when there is none.
	RawQuery() string
	// Method is the request method ("GET"; "POST" for gRPC).
	Method() string
	// ClientIP is the client's address; the zero Addr when unknown.
	ClientIP() netip.Addr
}

// HeaderKey is a header name prepared once, at load time, in the two spellings frameworks use.
type HeaderKey struct {
	lower     string
	canonical string
}

// NewHeaderKey prepares a header name.
func NewHeaderKey(name string) HeaderKey {
	return HeaderKey{lower: strings.ToLower(name), canonical: textproto.CanonicalMIMEHeaderKey(name)}
}

// Lower returns the name in lower case, as HTTP/2, gRPC metadata and nginx use it.
func (k HeaderKey) Lower() string { return k.lower }

// Canonical returns the name in net/http's canonical form ("X-Md-Global-Gray-Lane").
func (k HeaderKey) Canonical() string { return k.canonical }

// IsZero reports whether the key was never set.
func (k HeaderKey) IsZero() bool { return k.lower == "" }

// cookieKey is the Cookie header, read for cookie conditions and sticky cookies.
var cookieKey = NewHeaderKey("Cookie")

// StaticRequest is a Request held in plain fields, for tools (the graylane command's explain), tests
// and the shared test vectors.
type StaticRequest struct {
	// Headers maps lower-case header names to values.
	Headers    map[string]string
	URLPath    string
	URLQuery   string // raw query, without '?'
	HTTPMethod string
	Client     netip.Addr
}

var _ Request = (*StaticRequest)(nil)

// Header implements Request.
func (r *StaticRequest) Header(key HeaderKey) (string, bool) {
	v, ok := r.Headers[key.lower]
	return v, ok
}

// Path implements Request.
func (r *StaticRequest) Path() string { return r.URLPath }

// RawQuery implements Request.
func (r *StaticRequest) RawQuery() string { return r.URLQuery }

// Method implements Request.
func (r *StaticRequest) Method() string { return r.HTTPMethod }

// ClientIP implements Request.
func (r *StaticRequest) ClientIP() netip.Addr { return r.Client }

// cookieValue finds a cookie in a Cookie header ("a=1; b=2") without allocating. Surrounding double
// quotes are removed from the value.
func cookieValue(header, name string) (string, bool) {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		part = strings.TrimSpace(part)
		k, v, ok := strings.Cut(part, "=")
		if !ok || k != name {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return v, true
	}
	return "", false
}

// queryValue finds a parameter in a raw query string. It allocates only to unescape a value that
// holds '%' or '+'; a value that does not unescape is used as it is.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(part, "=")
		if k != name && !(strings.ContainsAny(k, "%+") && unescapeQuery(k) == name) {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			v = unescapeQuery(v)
		}
		return v, true
	}
	return "", false
}
