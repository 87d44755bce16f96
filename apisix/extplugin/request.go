package extplugin

import (
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"sync"
	"sync/atomic"
	"unsafe"

	pkgHTTP "github.com/apache/apisix-go-plugin-runner/pkg/http"
	A6 "github.com/api7/ext-plugin-proto/go/A6"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"

	"github.com/graylane/graylane/gray"
)

// request is the core's view of one runner request. It lives for one Decide call: the strings it
// returns may point into the runner's message buffer or into its own scratch buffer, and the core
// does not keep them.
//
// The runner's pkgHTTP.Request builds a Go header map (two strings and a slice per header, then a
// clone) on the first Header() call, and url.Values on the first Args() call; that costs more than
// the whole decision. So when the request is the runner's own type, the view reads the incoming
// flatbuffer message directly (see flatReq) and the plugin calls Header() only when it must change
// the lane header. Any other pkgHTTP.Request is read through Header() and Args().
type request struct {
	flat *hrc.Req // the runner's message, or nil
	r    pkgHTTP.Request
	hdr  http.Header // when flat is nil

	hideTag string // lower-case lane header to hide (an untrusted client's), or ""
	entry   A6.TextEntry
	// The message's headers, decoded once per request (names and values point into the message);
	// a request with more than maxIndexed headers is scanned in the message instead.
	names, values [maxIndexed][]byte
	indexed       int
	query         []byte // RawQuery's scratch buffer, reused across requests
	queryDone     bool
}

// maxIndexed bounds the headers a request view decodes up front.
const maxIndexed = 48

var _ gray.Request = (*request)(nil)

var requestPool = sync.Pool{New: func() any { return new(request) }}

func (q *request) bind(r pkgHTTP.Request) {
	q.r = r
	if q.flat = flatReq(r); q.flat == nil {
		q.hdr = r.Header().View()
		return
	}
	q.indexed = -1
	if n := q.flat.HeadersLength(); n <= maxIndexed {
		for i := range n {
			if q.flat.Headers(&q.entry, i) {
				q.names[i], q.values[i] = q.entry.Name(), q.entry.Value()
			}
		}
		q.indexed = n
	}
}

func (q *request) release() {
	q.flat, q.r, q.hdr, q.hideTag, q.queryDone = nil, nil, nil, "", false
	q.entry = A6.TextEntry{}
	for i := range max(q.indexed, 0) {
		q.names[i], q.values[i] = nil, nil
	}
	q.indexed = 0
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
	if q.flat == nil {
		vs := q.hdr[k.Canonical()]
		if len(vs) == 0 {
			return "", 0
		}
		return vs[0], len(vs)
	}
	var first string
	count := 0
	lower := k.Lower()
	if q.indexed >= 0 {
		for i := range q.indexed {
			if len(q.names[i]) == len(lower) && equalFoldLower(q.names[i], lower) {
				if count == 0 {
					first = bytesString(q.values[i])
				}
				count++
			}
		}
		return first, count
	}
	for i, n := 0, q.flat.HeadersLength(); i < n; i++ {
		if q.flat.Headers(&q.entry, i) && equalFoldLower(q.entry.Name(), lower) {
			if count == 0 {
				first = bytesString(q.entry.Value())
			}
			count++
		}
	}
	return first, count
}

// Path implements gray.Request. The bytes belong to the runner's message, alive for the call.
func (q *request) Path() string { return bytesString(q.r.Path()) }

// RawQuery implements gray.Request. APISIX hands the arguments decoded; they are escaped back
// into a query string, once per request and only when a rule asks for the query.
func (q *request) RawQuery() string {
	if !q.queryDone {
		q.query = q.query[:0]
		if q.flat != nil {
			for i, n := 0, q.flat.ArgsLength(); i < n; i++ {
				if q.flat.Args(&q.entry, i) {
					q.query = appendArg(q.query, bytesString(q.entry.Name()), bytesString(q.entry.Value()))
				}
			}
		} else {
			for k, vs := range q.r.Args() {
				for _, v := range vs {
					q.query = appendArg(q.query, k, v)
				}
			}
		}
		q.queryDone = true
	}
	return bytesString(q.query)
}

// Method implements gray.Request.
func (q *request) Method() string {
	if q.flat != nil {
		return q.flat.Method().String()
	}
	return q.r.Method()
}

// ClientIP implements gray.Request: the source address APISIX reports, IPv4 unmapped.
func (q *request) ClientIP() netip.Addr {
	var ip []byte
	if q.flat != nil {
		ip = q.flat.SrcIpBytes()
	} else {
		ip = q.r.SrcIP()
	}
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// flatReq returns the flatbuffer message behind the runner's request type, or nil for any other
// implementation. apisix-go-plugin-runner v0.5.0 keeps it in the first field of its
// internal/http.Request; the field's name, type and offset are checked once by reflection before
// it is ever read, so another runner version falls back to the public interface.
func flatReq(r pkgHTTP.Request) *hrc.Req {
	v := verdict(r)
	if !v.runner {
		return nil
	}
	return (*struct{ r *hrc.Req })(reflect.ValueOf(r).UnsafePointer()).r
}

// verdict returns what is known of r's type (see flatReq).
func verdict(r pkgHTTP.Request) *typeVerdict {
	t := reflect.TypeOf(r)
	if v := lastType.Load(); v != nil && v.t == t {
		return v
	}
	v := &typeVerdict{t: t, runner: isRunnerRequest(t)}
	if v.runner {
		v.hdrOff, v.rawOff, v.hdrType, v.edits = headerFields(t.Elem())
	}
	lastType.Store(v)
	return v
}

// typeVerdict remembers whether the last request type seen is the runner's, and where its header
// fields are.
type typeVerdict struct {
	t      reflect.Type
	runner bool
	// edits: the runner's hdr (a *Header wrapping an http.Header) and rawHdr (http.Header) fields
	// were found at hdrOff and rawOff, so setHeader can fill them directly.
	edits          bool
	hdrOff, rawOff uintptr
	hdrType        reflect.Type
}

var lastType atomic.Pointer[typeVerdict]

func isRunnerRequest(t reflect.Type) bool {
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return false
	}
	s := t.Elem()
	if s.PkgPath() != "github.com/apache/apisix-go-plugin-runner/internal/http" || s.Name() != "Request" || s.NumField() == 0 {
		return false
	}
	f := s.Field(0)
	return f.Name == "r" && f.Offset == 0 && f.Type == reflect.TypeOf((*hrc.Req)(nil))
}

// headerFields finds the runner request's hdr and rawHdr fields. When the runner builds its answer
// it sends, as header changes, exactly the differences between the two; Header() fills both with
// every header of the message (a map of strings, and a clone of it), which costs several times the
// whole decision.
func headerFields(s reflect.Type) (hdrOff, rawOff uintptr, hdrType reflect.Type, ok bool) {
	hdr, ok1 := s.FieldByName("hdr")
	raw, ok2 := s.FieldByName("rawHdr")
	httpHeader := reflect.TypeOf(http.Header(nil))
	if !ok1 || !ok2 || raw.Type != httpHeader || hdr.Type.Kind() != reflect.Pointer {
		return 0, 0, nil, false
	}
	w := hdr.Type.Elem()
	if w.Kind() != reflect.Struct || w.NumField() != 1 || !w.Field(0).Anonymous || w.Field(0).Type != httpHeader {
		return 0, 0, nil, false
	}
	return hdr.Offset, raw.Offset, hdr.Type, true
}

// setHeader changes one request header: to value, or removed when value is nil; old is the value
// the client sent (nil when absent). On the runner's own request type, before anything built its
// header map, it fills the runner's two header maps with that one header only, so that the runner's
// answer carries exactly this change; otherwise it goes through Header(). graylane's runner carries
// graylane's plugin alone, so nothing after it reads the (partial) header map.
func setHeader(r pkgHTTP.Request, canonical string, value []string, old string, hadOld bool) {
	v := verdict(r)
	if v.runner && v.edits {
		base := reflect.ValueOf(r).UnsafePointer()
		hdrField := (*unsafe.Pointer)(unsafe.Add(base, v.hdrOff))
		if *hdrField == nil {
			raw := http.Header{}
			if hadOld {
				raw[canonical] = []string{old}
			}
			now := http.Header{}
			if value != nil {
				now[canonical] = value
			}
			wrapper := reflect.New(v.hdrType.Elem())
			wrapper.Elem().Field(0).Set(reflect.ValueOf(now))
			*(*http.Header)(unsafe.Add(base, v.rawOff)) = raw
			*hdrField = wrapper.UnsafePointer()
			return
		}
	}
	if value == nil {
		delete(r.Header().View(), canonical)
		return
	}
	r.Header().View()[canonical] = value
}

// equalFoldLower reports whether name equals lower (already lower case), ignoring ASCII case.
func equalFoldLower(name []byte, lower string) bool {
	if len(name) != len(lower) {
		return false
	}
	for i := range len(name) {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// bytesString views b as a string without copying; b must not change while the string is used.
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
