package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// counter counts what the watcher's connections carry.
type counter struct {
	dials    atomic.Int64
	requests atomic.Int64
	counted  atomic.Bool // requests are counted on every connection
}

// dialer returns a DialContext that counts the connections it opens and, with requests, the
// requests written on them (HTTP/1.1; not on connections that TLS encrypts above it).
func (c *counter) dialer(requests bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c.dials.Add(1)
		if !requests {
			return conn, nil
		}
		return &countingConn{Conn: conn, c: c}, nil
	}
}

// tlsDialer returns a DialTLSContext that counts the connections it opens and the requests written
// on them, read before they are encrypted (HTTP/2 HEADERS frames, or HTTP/1.1 requests).
func (c *counter) tlsDialer(conf *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c.dials.Add(1)
		conn := tls.Client(raw, conf)
		if err := conn.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		return &countingTLSConn{countingConn{Conn: conn, c: c}, conn}, nil
	}
}

// countingConn counts the requests written on a connection: HTTP/1.1 requests, or, after the
// HTTP/2 preface, HEADERS frames (one per request; the watcher sends no trailers).
type countingConn struct {
	net.Conn
	c *counter

	mu      sync.Mutex
	started bool
	h2      bool
	preface int    // bytes of the HTTP/2 preface seen
	header  []byte // the part of a frame header seen
	skip    int    // bytes of a frame's payload still to come
}

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func (cc *countingConn) Write(b []byte) (int, error) {
	cc.mu.Lock()
	cc.count(b)
	cc.mu.Unlock()
	return cc.Conn.Write(b)
}

func (cc *countingConn) count(b []byte) {
	if !cc.started {
		cc.started = true
		cc.h2 = len(b) > 0 && bytes.Equal(b[:min(len(b), len(h2Preface))], []byte(h2Preface[:min(len(b), len(h2Preface))]))
	}
	if !cc.h2 {
		for _, m := range []string{"GET ", "PUT ", "POST ", "DELETE ", "HEAD "} {
			if bytes.HasPrefix(b, []byte(m)) {
				cc.c.requests.Add(1)
				return
			}
		}
		return
	}
	for len(b) > 0 {
		switch {
		case cc.preface < len(h2Preface):
			n := min(len(h2Preface)-cc.preface, len(b))
			cc.preface += n
			b = b[n:]
		case cc.skip > 0:
			n := min(cc.skip, len(b))
			cc.skip -= n
			b = b[n:]
		default:
			n := min(9-len(cc.header), len(b))
			cc.header = append(cc.header, b[:n]...)
			b = b[n:]
			if len(cc.header) == 9 {
				if cc.header[3] == 0x1 { // HEADERS
					cc.c.requests.Add(1)
				}
				cc.skip = int(cc.header[0])<<16 | int(cc.header[1])<<8 | int(cc.header[2])
				cc.header = cc.header[:0]
			}
		}
	}
}

// countingTLSConn is a countingConn over TLS that tells the HTTP/2 client what TLS negotiated.
type countingTLSConn struct {
	countingConn
	tls *tls.Conn
}

func (c *countingTLSConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// openConns counts this process's established TCP connections to port on loopback.
func openConns(port int) int {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	want := fmt.Sprintf(":%04X", port)
	n := 0
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			if len(fields) < 10 || fields[3] != "01" || !strings.HasSuffix(fields[2], want) {
				continue
			}
			if inodes[fields[9]] {
				n++
			}
		}
		f.Close()
	}
	return n
}

// peakConns samples openConns every 20 ms until stop is closed, and returns the most seen.
func peakConns(port int, stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		peak := 0
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, openConns(port))
			select {
			case <-stop:
				out <- max(peak, openConns(port))
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// portOf returns the port of host:port.
func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}
