package consultest

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Slow returns the address of a reverse proxy in front of the agent at agentAddr that holds every
// request for delay before passing it on: a Consul that answers slowly, as one across a network or
// under load does. The proxy is closed in the test's cleanup.
func Slow(tb testing.TB, agentAddr string, delay time.Duration) string {
	tb.Helper()
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: agentAddr})
	proxy.ErrorLog = log.New(io.Discard, "", 0) // blocking queries cut when their client stops
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	tb.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}
