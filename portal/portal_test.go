package portal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/registrar"
)

// agent is the Consul agent the package's tests share; each test registers its own service.
var agent *consultest.Agent

func TestMain(m *testing.M) {
	a, err := consultest.StartAgent()
	if err != nil {
		fmt.Fprintln(os.Stderr, "portal tests need a Consul agent:", err)
		os.Exit(1)
	}
	agent = a
	code := m.Run()
	a.Stop()
	os.Exit(code)
}

var serviceSeq atomic.Int64

// registerRelease registers testdata/release.yaml as a service of its own (checkout-N) and returns
// its name.
func registerRelease(t testing.TB, a *consultest.Agent, token string) string {
	t.Helper()
	return registerReleaseAs(t, a, token, fmt.Sprintf("checkout%d", serviceSeq.Add(1)))
}

// registerReleaseAs registers testdata/release.yaml as the service name.
func registerReleaseAs(t testing.TB, a *consultest.Agent, token, name string) string {
	t.Helper()
	specs, err := registrar.LoadSpecs("testdata/release.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i := range specs {
		specs[i].Name = name
		specs[i].ID = strings.Replace(specs[i].ID, "checkout", name, 1)
	}
	applyForTest(t, a, token, specs)
	return name
}

// applyForTest registers specs (instances of one service) and removes the service, its instances
// and its recorded state, when the test ends: the tests share one agent, and a portal follows every
// service on it, two blocking queries each, against Consul's limit on one address's connections.
func applyForTest(t testing.TB, a *consultest.Agent, token string, specs []registrar.Spec) {
	t.Helper()
	r := newRegistrar(t, a, token, "setup")
	t.Cleanup(func() {
		c := r.Client()
		for _, s := range specs {
			var gone api.StatusError // removed by the test itself
			if err := c.Agent().ServiceDeregister(s.ID); err != nil && !(errors.As(err, &gone) && gone.Code == http.StatusNotFound) {
				t.Errorf("removing %s: %v", s.ID, err)
			}
		}
		if _, err := c.KV().DeleteTree(registrar.DefaultKVPrefix+"/services/"+specs[0].Name+"/", nil); err != nil {
			t.Errorf("removing the recorded state of %s: %v", specs[0].Name, err)
		}
	})
	if _, err := r.Apply(context.Background(), specs, registrar.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func newRegistrar(t testing.TB, a *consultest.Agent, token, who string) *registrar.Registrar {
	t.Helper()
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = token
	r, err := registrar.New(cfg, registrar.WithOperator(who))
	if err != nil {
		t.Fatal(err)
	}
	// Consul limits the connections of one address; the tests share one agent.
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return r
}

const testPassword = "correct horse battery"

// writePasswords writes a password file for the operators, with a low hash cost to keep tests fast.
func writePasswords(t testing.TB, names ...string) *Passwords {
	t.Helper()
	var lines []string
	for _, n := range names {
		line, err := hashPassword(n, testPassword, 1000)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, line)
	}
	path := filepath.Join(t.TempDir(), "passwords")
	if err := os.WriteFile(path, []byte("# operators\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPasswords(path)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startPortal runs a portal on the shared agent (or a) and serves it on loopback.
func startPortal(t testing.TB, a *consultest.Agent, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	if a == nil {
		a = agent
	}
	if cfg.Consul == nil {
		cfg.Consul = registrar.NewConfig(a.HTTPAddr)
		cfg.Consul.Token = a.Token
	}
	if cfg.Passwords == nil && !cfg.Open {
		cfg.Passwords = writePasswords(t, "alice", "bob")
	}
	if cfg.DrainGrace == 0 {
		cfg.DrainGrace = 10 * time.Millisecond
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(p)
	t.Cleanup(func() {
		p.Close() // ends open event streams first
		ts.Close()
	})
	return p, ts
}

// browser is an HTTP client with a cookie jar that does not follow redirects.
type browser struct {
	t    testing.TB
	ts   *httptest.Server
	c    *http.Client
	csrf string
}

func newBrowser(t testing.TB, ts *httptest.Server) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, ts: ts, c: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type page struct {
	status   int
	location string
	body     string
}

func (b *browser) get(path string) page {
	b.t.Helper()
	resp, err := b.c.Get(b.ts.URL + path)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.read(resp)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (b *browser) read(resp *http.Response) page {
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := page{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(body)}
	if m := csrfRE.FindStringSubmatch(p.body); m != nil {
		b.csrf = m[1]
	}
	return p
}

// post sends a form; the session's CSRF token is added unless the form sets "csrf" itself.
func (b *browser) post(path string, form url.Values, header ...string) page {
	b.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok && b.csrf != "" {
		form.Set("csrf", b.csrf)
	}
	req, _ := http.NewRequest(http.MethodPost, b.ts.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.read(resp)
}

func (b *browser) signIn(name string) {
	b.t.Helper()
	p := b.post("/login", url.Values{"name": {name}, "password": {testPassword}, "next": {"/"}})
	if p.status != http.StatusSeeOther {
		b.t.Fatalf("sign-in as %s: status %d: %s", name, p.status, p.body)
	}
}

// follow posts a form and loads the page it redirects to.
func (b *browser) follow(path string, form url.Values) page {
	b.t.Helper()
	p := b.post(path, form)
	if p.status != http.StatusSeeOther {
		b.t.Fatalf("POST %s: status %d, want a redirect: %s", path, p.status, p.body)
	}
	return b.get(p.location)
}

func mustContain(t testing.TB, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Fatalf("page lacks %q:\n%s", w, body)
		}
	}
}

func mustNotContain(t testing.TB, body string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(body, w) {
			t.Fatalf("page holds %q:\n%s", w, body)
		}
	}
}

// laneWeight reads a lane's recorded weight through the registrar.
func laneWeight(t testing.TB, service, lane string) string {
	t.Helper()
	st, err := newRegistrar(t, agent, "", "check").Status(context.Background(), service, gray.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range st.Lanes {
		if l.Name == lane {
			return l.Weight.String()
		}
	}
	return "(no lane " + lane + ")"
}

// waitFor polls cond until it holds or the timeout passes.
var waitFor = eventually.Wait
