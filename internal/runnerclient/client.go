// Package runnerclient speaks APISIX's side of the ext-plugin protocol to a plugin runner: it
// dials the runner's unix socket and sends PrepareConf and HTTPReqCall messages built with
// ext-plugin-proto's flatbuffer builders (a frame is one type byte, a 3-byte big-endian length and a
// flatbuffer), as APISIX does. graylane's tests and its demo drive the real runner through it.
package runnerclient

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	A6 "github.com/api7/ext-plugin-proto/go/A6"
	A6Err "github.com/api7/ext-plugin-proto/go/A6/Err"
	hrc "github.com/api7/ext-plugin-proto/go/A6/HTTPReqCall"
	pc "github.com/api7/ext-plugin-proto/go/A6/PrepareConf"
	flatbuffers "github.com/google/flatbuffers/go"
)

// Frame types of the protocol.
const (
	rpcError       = 0
	rpcPrepareConf = 1
	rpcHTTPReqCall = 2
)

// Conn is one APISIX connection to the runner. Not safe for concurrent use.
type Conn struct {
	c   net.Conn
	b   *flatbuffers.Builder
	hdr [4]byte
	buf []byte
}

// DialConn connects to a runner's socket. Close the connection when done.
func DialConn(sock string) (*Conn, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, b: flatbuffers.NewBuilder(1024)}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

func (c *Conn) send(ty byte) error {
	out := c.b.FinishedBytes()
	frame := make([]byte, 4+len(out))
	binary.BigEndian.PutUint32(frame, uint32(len(out)))
	frame[0] = ty
	copy(frame[4:], out)
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := c.c.Write(frame) // one write: the runner reads a message with one Read
	return err
}

func (c *Conn) receive() (byte, []byte, error) {
	if _, err := io.ReadFull(c.c, c.hdr[:]); err != nil {
		return 0, nil, err
	}
	ty := c.hdr[0]
	c.hdr[0] = 0
	n := binary.BigEndian.Uint32(c.hdr[:])
	if cap(c.buf) < int(n) {
		c.buf = make([]byte, n)
	}
	c.buf = c.buf[:n]
	if _, err := io.ReadFull(c.c, c.buf); err != nil {
		return 0, nil, err
	}
	return ty, c.buf, nil
}

// ErrorAnswer is the runner's Err answer.
type ErrorAnswer struct{ Code A6Err.Code }

func (e *ErrorAnswer) Error() string { return "runner answered error " + e.Code.String() }

// PrepareConf sends a PrepareConf with one plugin conf per (name, value) pair and returns the token.
func (c *Conn) PrepareConf(key string, confs ...[2]string) (uint32, error) {
	b := c.b
	b.Reset()
	vec := textEntries(b, confs, pc.ReqStartConfVector)
	k := b.CreateString(key)
	pc.ReqStart(b)
	pc.ReqAddConf(b, vec)
	pc.ReqAddKey(b, k)
	b.Finish(pc.ReqEnd(b))
	if err := c.send(rpcPrepareConf); err != nil {
		return 0, err
	}
	ty, buf, err := c.receive()
	if err != nil {
		return 0, err
	}
	if ty == rpcError {
		return 0, &ErrorAnswer{A6Err.GetRootAsResp(buf, 0).Code()}
	}
	return pc.GetRootAsResp(buf, 0).ConfToken(), nil
}

// Request is what APISIX sends in an HTTPReqCall.
type Request struct {
	Token   uint32
	ID      uint32
	IP      netip.Addr // the zero Addr sends no address
	Method  A6.Method
	Path    string
	Headers [][2]string
	Args    [][2]string
}

// Answer is a decoded answer: header changes (a nil value removes the header) and response headers;
// for a Stop, the status, headers and body the client gets instead.
type Answer struct {
	Action      hrc.Action
	Headers     map[string]*string // a nil value removes the header
	RespHeaders map[string]string
	Status      int    // Stop only
	Body        string // Stop only
}

// Header returns the value the answer sets for header, whether it removes it, and whether it touches
// it at all.
func (rw *Answer) Header(name string) (value string, removed, touched bool) {
	for k, v := range rw.Headers {
		if strings.EqualFold(k, name) {
			if v == nil {
				return "", true, true
			}
			return *v, false, true
		}
	}
	return "", false, false
}

// Final returns the header's value as the upstream would see it: the request's own value with the
// answer's changes applied.
func (rw *Answer) Final(r *Request, name string) string {
	if v, removed, touched := rw.Header(name); touched {
		if removed {
			return ""
		}
		return v
	}
	for _, kv := range r.Headers {
		if strings.EqualFold(kv[0], name) {
			return kv[1]
		}
	}
	return ""
}

// textEntries writes kvs as a vector of A6 TextEntry tables, started with start (the generated
// ReqStart...Vector of the field it goes in), and returns the vector.
func textEntries(b *flatbuffers.Builder, kvs [][2]string, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT) flatbuffers.UOffsetT {
	offs := make([]flatbuffers.UOffsetT, len(kvs))
	for i, kv := range kvs {
		name, value := b.CreateString(kv[0]), b.CreateString(kv[1])
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		A6.TextEntryAddValue(b, value)
		offs[i] = A6.TextEntryEnd(b)
	}
	start(b, len(offs))
	for i := len(offs) - 1; i >= 0; i-- {
		b.PrependUOffsetT(offs[i])
	}
	return b.EndVector(len(offs))
}

func (c *Conn) build(r *Request) {
	b := c.b
	b.Reset()
	hdrs := textEntries(b, r.Headers, hrc.ReqStartHeadersVector)
	args := textEntries(b, r.Args, hrc.ReqStartArgsVector)
	var path, ip flatbuffers.UOffsetT
	if r.Path != "" {
		path = b.CreateString(r.Path)
	}
	if r.IP.IsValid() {
		ip = b.CreateByteVector(r.IP.AsSlice())
	}
	hrc.ReqStart(b)
	hrc.ReqAddId(b, r.ID)
	hrc.ReqAddConfToken(b, r.Token)
	hrc.ReqAddMethod(b, r.Method)
	if path != 0 {
		hrc.ReqAddPath(b, path)
	}
	if ip != 0 {
		hrc.ReqAddSrcIp(b, ip)
	}
	hrc.ReqAddHeaders(b, hdrs)
	hrc.ReqAddArgs(b, args)
	b.Finish(hrc.ReqEnd(b))
}

// Call sends an HTTPReqCall and decodes the answer. An Err answer is an *ErrorAnswer.
func (c *Conn) Call(r *Request) (*Answer, error) {
	c.build(r)
	if err := c.send(rpcHTTPReqCall); err != nil {
		return nil, err
	}
	ty, buf, err := c.receive()
	if err != nil {
		return nil, err
	}
	if ty == rpcError {
		return nil, &ErrorAnswer{A6Err.GetRootAsResp(buf, 0).Code()}
	}
	resp := hrc.GetRootAsResp(buf, 0)
	if resp.Id() != r.ID {
		return nil, fmt.Errorf("answer for request %d, want %d", resp.Id(), r.ID)
	}
	out := &Answer{Action: resp.ActionType(), Headers: map[string]*string{}, RespHeaders: map[string]string{}}
	if out.Action != hrc.ActionRewrite && out.Action != hrc.ActionStop {
		return out, nil
	}
	var tbl flatbuffers.Table
	if !resp.Action(&tbl) {
		return nil, fmt.Errorf("%s answer without its table", hrc.EnumNamesAction[out.Action])
	}
	var te A6.TextEntry
	if out.Action == hrc.ActionStop {
		st := new(hrc.Stop)
		st.Init(tbl.Bytes, tbl.Pos)
		out.Status, out.Body = int(st.Status()), string(st.BodyBytes())
		for i := 0; i < st.HeadersLength(); i++ {
			if st.Headers(&te, i) {
				out.RespHeaders[string(te.Name())] = string(te.Value())
			}
		}
		return out, nil
	}
	rw := new(hrc.Rewrite)
	rw.Init(tbl.Bytes, tbl.Pos)
	for i := 0; i < rw.HeadersLength(); i++ {
		if rw.Headers(&te, i) {
			if v := te.Value(); v != nil {
				s := string(v)
				out.Headers[string(te.Name())] = &s
			} else {
				out.Headers[string(te.Name())] = nil
			}
		}
	}
	for i := 0; i < rw.RespHeadersLength(); i++ {
		if rw.RespHeaders(&te, i) {
			out.RespHeaders[string(te.Name())] = string(te.Value())
		}
	}
	return out, nil
}
