package portal

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Sign-in throttling. Each operator name and each client address has a run of failed sign-ins.
// The first few failures of a run are free; each one after them blocks the name or the address for
// a time that doubles, from firstBlock up to maxBlock. A blocked attempt is refused before its
// password is checked, so a flood of guesses costs the portal no key derivation and cannot hold up
// an operator signing in from elsewhere. A success ends the name's and the address's runs; a run
// with no failure for forgetAfter is forgotten.
const (
	freeFailuresPerName = 5
	freeFailuresPerAddr = 10
	firstBlock          = time.Second
	maxBlock            = 5 * time.Minute
	forgetAfter         = 15 * time.Minute
	maxRuns             = 10000 // runs kept; past it, forgotten ones are swept
)

type signinThrottle struct {
	mu   sync.Mutex
	runs map[string]*failureRun // "name:" + operator, "addr:" + client address
	now  func() time.Time
}

type failureRun struct {
	fails   int
	last    time.Time
	blocked time.Time // refused until then
}

func newSigninThrottle() *signinThrottle {
	return &signinThrottle{runs: map[string]*failureRun{}, now: time.Now}
}

// wait returns how long sign-ins as name from addr are still refused (0: not refused).
func (t *signinThrottle) wait(name, addr string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var longest time.Duration
	for _, key := range [...]string{"name:" + name, "addr:" + addr} {
		if r := t.runs[key]; r != nil && r.blocked.After(now) {
			longest = max(longest, r.blocked.Sub(now))
		}
	}
	return longest
}

// failed records a failed sign-in as name from addr.
func (t *signinThrottle) failed(name, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if len(t.runs) >= maxRuns {
		for k, r := range t.runs {
			if now.Sub(r.last) > forgetAfter && !r.blocked.After(now) {
				delete(t.runs, k)
			}
		}
	}
	for _, k := range [...]struct {
		key  string
		free int
	}{{"name:" + name, freeFailuresPerName}, {"addr:" + addr, freeFailuresPerAddr}} {
		r := t.runs[k.key]
		if r == nil || now.Sub(r.last) > forgetAfter {
			r = &failureRun{}
			t.runs[k.key] = r
		}
		r.fails++
		r.last = now
		if over := r.fails - k.free; over > 0 {
			block := maxBlock
			if over < 20 {
				block = min(maxBlock, firstBlock<<(over-1))
			}
			r.blocked = now.Add(block)
		}
	}
}

// succeeded ends the runs of name and addr.
func (t *signinThrottle) succeeded(name, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.runs, "name:"+name)
	delete(t.runs, "addr:"+addr)
}

// clientAddr is the address a request came from: the connection's peer. A proxy in front of the
// portal makes every request come from the proxy; X-Forwarded-For is not trusted, since any client
// can send it.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
