package apisixtest

// The APISIX side of the ext-plugin protocol, to drive a plugin runner as APISIX does: start it
// with APISIX_LISTEN_ADDRESS=unix:... and APISIX_CONF_EXPIRE_TIME, dial its socket, and speak the
// wire protocol with ext-plugin-proto's flatbuffer builders (a frame is one type byte, a 3-byte
// big-endian length and a flatbuffer).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
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

// Runner is a plugin runner process, started as APISIX starts it.
type Runner struct {
	tb   testing.TB
	cmd  *exec.Cmd
	sock string
	out  *syncBuffer
	done chan struct{}
	err  error // the process's exit, once done is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startRunner starts the command as APISIX starts its runner, with env added, and waits for the
// socket. The runner is stopped with SIGTERM when the test ends.
// StartRunner starts argv as APISIX starts its runner, with env added, and waits for the socket.
// The runner is stopped with SIGTERM when the test ends.
func StartRunner(tb testing.TB, sock string, argv []string, env ...string) *Runner {
	tb.Helper()
	r := &Runner{tb: tb, sock: sock, out: &syncBuffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(argv[0], argv[1:]...)
	r.cmd.Env = append([]string{
		"APISIX_LISTEN_ADDRESS=unix:" + sock,
		"APISIX_CONF_EXPIRE_TIME=3600",
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
	}, env...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		tb.Fatalf("start runner: %v", err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	tb.Cleanup(func() { r.Stop() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return r
		}
		select {
		case <-r.done:
			tb.Fatalf("runner exited before listening: %v\n%s", r.err, r.out)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("runner did not listen on %s: %v\n%s", sock, err, r.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and returns the process's exit error; it kills the process after 10 s.
// Stop sends SIGTERM and returns the process's exit error; it kills the process after 10 s.
func (r *Runner) Stop() error {
	select {
	case <-r.done:
		return r.err
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
		return errors.New("runner ignored SIGTERM for 10s")
	}
	return r.err
}

// Output returns what the runner has written (its log).
func (r *Runner) Output() string { return r.out.String() }

// Alive reports whether the process is still running.
func (r *Runner) Alive() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Conn is one APISIX connection to the runner. Not safe for concurrent use.
type Conn struct {
	c   net.Conn
	b   *flatbuffers.Builder
	hdr [4]byte
	buf []byte
}

// Dial connects to a runner's socket for the test; the connection closes when the test ends.
func Dial(tb testing.TB, sock string) *Conn {
	tb.Helper()
	c, err := DialConn(sock)
	if err != nil {
		tb.Fatalf("dial runner: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
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

// prepareConf sends a PrepareConf with one plugin conf per (name, value) pair and returns the token.
func (c *Conn) PrepareConf(key string, confs ...[2]string) (uint32, error) {
	b := c.b
	b.Reset()
	entries := make([]flatbuffers.UOffsetT, len(confs))
	for i, kv := range confs {
		name, value := b.CreateString(kv[0]), b.CreateString(kv[1])
		A6.TextEntryStart(b)
		A6.TextEntryAddName(b, name)
		A6.TextEntryAddValue(b, value)
		entries[i] = A6.TextEntryEnd(b)
	}
	pc.ReqStartConfVector(b, len(entries))
	for i := len(entries) - 1; i >= 0; i-- {
		b.PrependUOffsetT(entries[i])
	}
	vec := b.EndVector(len(entries))
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

// rewrite is a decoded answer: header changes (a nil value removes the header) and response headers.
type Answer struct {
	Action      hrc.Action
	Headers     map[string]*string // a nil value removes the header
	RespHeaders map[string]string
}

// header returns the value the answer sets for header, whether it removes it, and whether it touches
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

// final returns the header's value as the upstream would see it: the request's own value with the
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

func (c *Conn) build(r *Request) {
	b := c.b
	b.Reset()
	entries := func(kvs [][2]string, start func(*flatbuffers.Builder, int) flatbuffers.UOffsetT) flatbuffers.UOffsetT {
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
	hdrs := entries(r.Headers, hrc.ReqStartHeadersVector)
	args := entries(r.Args, hrc.ReqStartArgsVector)
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

// call sends an HTTPReqCall and decodes the answer. An Err answer is an *ErrorAnswer.
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
	if out.Action != hrc.ActionRewrite {
		return out, nil
	}
	var tbl flatbuffers.Table
	if !resp.Action(&tbl) {
		return nil, errors.New("rewrite answer without its table")
	}
	rw := new(hrc.Rewrite)
	rw.Init(tbl.Bytes, tbl.Pos)
	var te A6.TextEntry
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
