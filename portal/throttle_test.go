package portal

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graylane/graylane/registrar"
)

// TestSignInThrottle: guesses of one operator's password, and guesses from one address, are
// refused after a few failures, before their password is checked, for a time that doubles; a
// success clears the run; a flood from one address runs a bounded number of password checks while
// an operator elsewhere signs in; every failure is logged with the name and the address, never the
// password.
func TestSignInThrottle(t *testing.T) {
	var mu sync.Mutex
	var logs []string
	p, _ := startPortal(t, nil, Config{Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, fmt.Sprintf(format, args...))
	}})
	var later atomic.Int64 // how far the throttle's clock is ahead
	p.throttle.now = func() time.Time { return time.Now().Add(time.Duration(later.Load())) }
	login := func(addr, name, password string) *httptest.ResponseRecorder {
		form := url.Values{"name": {name}, "password": {password}}
		r := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.RemoteAddr = addr + ":40000"
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r)
		return w
	}

	// One operator's password guessed from one address.
	for i := range freeFailuresPerName + 1 {
		if w := login("192.0.2.1", "alice", fmt.Sprintf("guess-%d", i)); w.Code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d, want 401", i, w.Code)
		}
	}
	checks := p.cfg.Passwords.checks.Load()
	w := login("198.51.100.7", "alice", testPassword) // even the right password, from elsewhere
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" || !strings.Contains(w.Body.String(), "try again in 1 s") {
		t.Fatalf("alice while blocked: %d %q", w.Code, w.Header().Get("Retry-After"))
	}
	if p.cfg.Passwords.checks.Load() != checks {
		t.Fatal("a blocked sign-in had its password checked")
	}
	later.Add(int64(1100 * time.Millisecond))
	if w := login("192.0.2.1", "alice", "guess-again"); w.Code != http.StatusUnauthorized {
		t.Fatalf("after the first block: %d, want 401", w.Code)
	}
	if w := login("192.0.2.1", "alice", testPassword); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("the second block: %d, Retry-After %q; want 429 for 2 s", w.Code, w.Header().Get("Retry-After"))
	}
	later.Add(int64(2100 * time.Millisecond))
	if w := login("192.0.2.1", "alice", testPassword); w.Code != http.StatusSeeOther {
		t.Fatalf("the right password after the block: %d", w.Code)
	}
	if w := login("192.0.2.1", "alice", "typo"); w.Code != http.StatusUnauthorized {
		t.Fatalf("a typo after a success: %d, want 401 (the run ended)", w.Code)
	}

	// A flood of guesses from one address, names varied; bob signs in from another meanwhile.
	checks = p.cfg.Passwords.checks.Load()
	var flood sync.WaitGroup
	var refused atomic.Int64
	for i := range 200 {
		flood.Add(1)
		go func() {
			defer flood.Done()
			if login("203.0.113.9", fmt.Sprintf("user-%d", i), "x").Code == http.StatusTooManyRequests {
				refused.Add(1)
			}
		}()
	}
	if w := login("198.51.100.7", "bob", testPassword); w.Code != http.StatusSeeOther {
		t.Fatalf("bob during the flood: %d", w.Code)
	}
	flood.Wait()
	ran := p.cfg.Passwords.checks.Load() - checks - 1 // bob's
	if ran > freeFailuresPerAddr+3 || refused.Load() < 200-freeFailuresPerAddr-3 {
		t.Fatalf("the flood ran %d password checks and %d of 200 were refused; want at most %d checks", ran, refused.Load(), freeFailuresPerAddr+3)
	}

	mu.Lock()
	defer mu.Unlock()
	failures := 0
	for _, line := range logs {
		if strings.Contains(line, "guess") || strings.Contains(line, testPassword) || strings.Contains(line, "typo") {
			t.Fatalf("a password in the log: %q", line)
		}
		if strings.Contains(line, "failed sign-in") {
			failures++
		}
	}
	if want := freeFailuresPerName + 1 + 1 + 1 + int(ran); failures != want || !strings.Contains(strings.Join(logs, "\n"), `failed sign-in as "alice" from 192.0.2.1`) {
		t.Fatalf("%d failures logged, want %d:\n%s", failures, want, strings.Join(logs, "\n"))
	}
}

// TestConnectionsAreBounded: a request whose body never completes loses its connection when the
// read timeout passes, while a page's event stream goes on past it.
func TestConnectionsAreBounded(t *testing.T) {
	registerRelease(t, agent, "")
	p, err := New(Config{Consul: registrar.NewConfig(agent.HTTPAddr), Open: true, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	p.timeouts = httpTimeouts{header: 300 * time.Millisecond, read: 500 * time.Millisecond, idle: time.Second}
	srv := p.HTTPServer()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer func() { p.Close(); srv.Close() }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /login HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nname=al", ln.Addr())
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("a request with a body that never completes kept its connection: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ln.Addr().String()+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(1500 * time.Millisecond) // three read timeouts
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				t.Fatal("the event stream ended when the read timeout passed")
			}
			continue
		case <-deadline:
		}
		break
	}
}
