package main

import (
	"bufio"
	"context"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/consultest"
)

// passwordFile writes a password file for one operator, hashed with few iterations to keep the test
// fast (the file format carries the iteration count).
func passwordFile(t *testing.T, name, password string) string {
	t.Helper()
	salt := []byte("0123456789abcdef")
	key, err := pbkdf2.Key(sha256.New, password, salt, 1000, 32)
	if err != nil {
		t.Fatal(err)
	}
	line := name + ":pbkdf2-sha256:1000:" + base64.RawStdEncoding.EncodeToString(salt) + ":" + base64.RawStdEncoding.EncodeToString(key)
	path := filepath.Join(t.TempDir(), "passwords")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPortalFollowsTheCommand serves the portal through the command and watches a change made with
// `graylane weight` reach an open page's event stream.
func TestPortalFollowsTheCommand(t *testing.T) {
	a := consultest.Start(t)
	mustRun(t, a, "apply", "-f", "../../registrar/testdata/bservice.yaml")
	pw := passwordFile(t, "carol", "a long password")

	ctx, stop := context.WithCancel(context.Background())
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	var errOut strings.Builder
	go func() {
		done <- run(ctx, []string{"portal", "--consul", a.HTTPAddr, "--listen", "127.0.0.1:0", "--passwords", pw}, outW, &errOut)
		outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("portal did not start: %v %s", err, errOut.String())
	}
	go io.Copy(io.Discard, outR)
	m := regexp.MustCompile(`serving (http://127\.0\.0\.1:\d+) \(sign-in required\)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("start line %q", line)
	}
	base := m[1]

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := c.PostForm(base+"/login", url.Values{"name": {"carol"}, "password": {"a long password"}, "next": {"/s/bservice"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `data-lane="canary" data-share="10"`) || !strings.Contains(string(body), "carol") {
		t.Fatalf("signed-in page: %d\n%s", resp.StatusCode, body)
	}
	version := regexp.MustCompile(`data-version="(\d+)"`).FindStringSubmatch(string(body))[1]

	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, base+"/events?service=bservice&since="+version, nil)
	stream, err := (&http.Client{Jar: jar}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Body.Close()
	start := time.Now()
	mustRun(t, a, "weight", "bservice", "canary", "35")
	found := make(chan time.Time, 1)
	go func() {
		sc := bufio.NewScanner(stream.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<22)
		for sc.Scan() {
			if strings.Contains(sc.Text(), `data-lane=\"canary\" data-share=\"35\"`) {
				found <- time.Now()
				return
			}
		}
	}()
	select {
	case at := <-found:
		t.Logf("graylane weight to the page's event: %v", at.Sub(start))
	case <-time.After(10 * time.Second):
		t.Fatal("the change made with the command did not reach the page")
	}
	cancel()
	stop()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("portal exit %d: %s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the portal did not stop")
	}
}

func TestPortalFlags(t *testing.T) {
	a := consultest.Start(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"portal"}, "--passwords FILE is required"},
		{[]string{"portal", "--no-sign-in"}, "--no-sign-in needs --read-only"},
		{[]string{"portal", "--read-only", "--no-sign-in", "--passwords", "x"}, "not both"},
		{[]string{"portal", "--passwords", "x", "--tls-cert", "c.pem"}, "both --tls-cert and --tls-key"},
	} {
		_, errOut, code := graylane(t, a, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("%v: exit %d, %q", tc.args, code, errOut)
		}
	}
	loose := filepath.Join(t.TempDir(), "passwords")
	os.WriteFile(loose, []byte("x:pbkdf2-sha256:1000:AAAAAAAAAAA:AAAA\n"), 0o644)
	if _, errOut, code := graylane(t, a, "portal", "--passwords", loose); code != 1 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("world-readable password file: exit %d, %q", code, errOut)
	}
}

// TestOpenPortalAnswersOnlyItsOwnHostNames: a portal without sign-in refuses a request naming
// another host (a page on another site that rebinds its name to the portal's address), and
// answers its listen address's names and those given with --host.
func TestOpenPortalAnswersOnlyItsOwnHostNames(t *testing.T) {
	a := consultest.Start(t)
	ctx, stop := context.WithCancel(context.Background())
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	var errOut strings.Builder
	go func() {
		done <- run(ctx, []string{"portal", "--consul", a.HTTPAddr, "--listen", "127.0.0.1:0", "--read-only", "--no-sign-in",
			"--host", "portal.example.internal"}, outW, &errOut)
		outW.Close()
	}()
	line, err := bufio.NewReader(outR).ReadString('\n')
	if err != nil {
		t.Fatalf("portal did not start: %v %s", err, errOut.String())
	}
	go io.Copy(io.Discard, outR)
	m := regexp.MustCompile(`serving (http://127\.0\.0\.1:(\d+))`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("start line %q", line)
	}
	get := func(host string) int {
		req, _ := http.NewRequest(http.MethodGet, m[1]+"/", nil)
		req.Host = host
		resp, err := (&http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, host := range []string{"evil.example", "evil.example:" + m[2], "127.0.0.2:" + m[2]} {
		if code := get(host); code != http.StatusMisdirectedRequest {
			t.Errorf("Host %s: %d, want 421", host, code)
		}
	}
	for _, host := range []string{"127.0.0.1:" + m[2], "localhost:" + m[2], "portal.example.internal"} {
		if code := get(host); code == http.StatusMisdirectedRequest {
			t.Errorf("Host %s: refused", host)
		}
	}
	stop()
	if code := <-done; code != 0 {
		t.Fatalf("portal exit %d: %s", code, errOut.String())
	}
}

// TestHashPasswordAtATerminal: at a terminal, --hash-password prompts for the password and does not
// echo it. The terminal is util-linux's script(1), a real pseudo-terminal.
func TestHashPasswordAtATerminal(t *testing.T) {
	scriptBin, err := exec.LookPath("script")
	if err != nil {
		t.Fatalf("script(1) from util-linux is needed for a terminal: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "graylane")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	const password = "a-password-nobody-may-see"
	cmd := exec.Command(scriptBin, "-qec", bin+" portal --hash-password alice", "/dev/null")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Type only after the prompt: what is typed before it, the terminal itself would echo.
	var out strings.Builder
	buf := make([]byte, 256)
	for !strings.Contains(out.String(), "(not shown): ") {
		n, err := pipe.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			t.Fatalf("no prompt: %v: %q", err, out.String())
		}
	}
	// term.ReadPassword turns echo off right after the prompt is written; leave it that moment.
	time.Sleep(300 * time.Millisecond)
	io.WriteString(stdin, password+"\n")
	rest, _ := io.ReadAll(pipe)
	out.Write(rest)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if !strings.Contains(out.String(), "password for alice (not shown):") || !strings.Contains(out.String(), "alice:pbkdf2-sha256:") {
		t.Fatalf("no prompt or no password line: %q", out.String())
	}
	if strings.Contains(out.String(), password) {
		t.Fatalf("the password was echoed: %q", out.String())
	}
}
