package portal

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestPasswordFile(t *testing.T) {
	line, err := HashPassword("alice", "a long password")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(line, "alice:pbkdf2-sha256:600000:") {
		t.Fatalf("line %q", line)
	}
	dir := t.TempDir()
	write := func(content string, mode os.FileMode) string {
		path := filepath.Join(dir, "p"+strings.ReplaceAll(t.Name(), "/", "_"))
		os.Remove(path)
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p, err := LoadPasswords(write("# operators\n\n"+line+"\n", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if !p.check("alice", "a long password") || p.check("alice", "a long passworD") || p.check("bob", "a long password") {
		t.Fatal("password check")
	}
	for _, tc := range []struct {
		content string
		mode    os.FileMode
		want    string
	}{
		{line + "\n", 0o640, "chmod 600"},
		{"", 0o600, "names no operator"},
		{"alice:plain:secret\n", 0o600, "line 1: expected name:pbkdf2-sha256"},
		{"# x\n" + strings.Replace(line, ":600000:", ":10:", 1) + "\n", 0o600, "line 2: iterations"},
		{line + "\n" + line + "\n", 0o600, `line 2: operator "alice" appears twice`},
		{"al ice" + line[5:] + "\n", 0o600, "operator name"},
		{strings.TrimSuffix(line, line[len(line)-4:]) + "\n", 0o600, "not valid base64"},
	} {
		if _, err := LoadPasswords(write(tc.content, tc.mode)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q (mode %v): %v, want %q", tc.content, tc.mode, err, tc.want)
		}
	}
	if _, err := HashPassword("bob", "short"); err == nil {
		t.Fatal("a short password was hashed")
	}
}

func FuzzPasswordLine(f *testing.F) {
	f.Add("alice:pbkdf2-sha256:1000:MDEyMzQ1Njc4OWFiY2RlZg:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("::::")
	f.Fuzz(func(t *testing.T, line string) {
		name, h, err := parseHashLine(line)
		if err == nil && (validOperator(name) != nil || h.iter < 1000 || len(h.hash) != 32) {
			t.Fatalf("accepted %q", line)
		}
	})
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/s/checkout": "/s/checkout", "//evil.example/x": "/", "https://evil.example": "/", "/\\evil": "/", "": "/", "/events?service=x": "/",
		"/\t/evil.example/": "/", "/\n/evil.example": "/", "/\r//evil.example": "/", "/ /evil.example": "/", "/%09/evil.example/": "/%09/evil.example/",
		"\t//evil.example": "/", "/s/a?x=1#top": "/s/a?x=1#top", "/s/%2F%2Fevil": "/s/%2F%2Fevil", "javascript:alert(1)": "/",
		"/\u00a0/evil.example": "/", "/\u2028/evil.example": "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCloseEndsEveryGoroutine(t *testing.T) {
	registerRelease(t, agent, "")
	p, ts := startPortal(t, nil, Config{})
	b := newBrowser(t, ts)
	b.signIn("alice")
	if page := b.get("/"); page.status != 303 {
		t.Fatalf("index: %d", page.status)
	}
	p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "graylane/portal.(*Server)") && !strings.Contains(stacks, "graylane/registrar.(*Watcher)") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines outlived Close:\n%s", stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
