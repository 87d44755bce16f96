// Package docs holds graylane's guides. Its test keeps them honest: every relative link leads to a
// file that exists, every Go snippet is code that a test compiles, and the Chinese guides show the
// same code blocks as the English ones.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

// guides returns the Markdown files of the repository's documentation, relative to its root.
func guides(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md", "README.zh-CN.md", "CONTRIBUTING.md", "CHANGELOG.md"}
	for _, pattern := range []string{"docs/*.md", "docs/zh-CN/*.md", "examples/*/README.md"} {
		m, err := filepath.Glob(filepath.Join("..", pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			files = append(files, strings.TrimPrefix(f, "../"))
		}
	}
	return files
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// block is one fenced code block.
type block struct {
	lang, text string
	line       int
}

var fence = regexp.MustCompile("^```")

// codeBlocks returns the fenced code blocks of a Markdown text in order.
func codeBlocks(md string) []block {
	var out []block
	var cur *block
	for i, line := range strings.Split(md, "\n") {
		switch {
		case cur == nil && fence.MatchString(line):
			cur = &block{lang: strings.TrimPrefix(line, "```"), line: i + 1}
		case cur != nil && strings.TrimSpace(line) == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
	}
	return out
}

var link = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestLinksResolve: a relative link in any guide names a file or folder that exists.
func TestLinksResolve(t *testing.T) {
	for _, f := range guides(t) {
		md := read(t, f)
		// Links inside code blocks are code, not links.
		for _, b := range codeBlocks(md) {
			md = strings.Replace(md, b.text, "", 1)
		}
		for _, m := range link.FindAllStringSubmatch(md, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "#") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			target, _, _ = strings.Cut(target, "#")
			path := filepath.Join("..", filepath.Dir(f), target)
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s: link %q: %v", f, m[1], err)
			}
		}
	}
}

// TestGoSnippetsAreCompiled: every Go block in a guide appears, line for line, in a Go file of the
// repository, which `go vet` and the tests compile, so a snippet cannot rot unseen. A block may
// join pieces of several functions: each piece, up to a blank line, is looked for on its own.
func TestGoSnippetsAreCompiled(t *testing.T) {
	var sources []string
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != ".." || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(path, ".go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sources = append(sources, squash(string(b)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range guides(t) {
		for _, b := range codeBlocks(read(t, f)) {
			if b.lang != "go" {
				continue
			}
			for _, piece := range strings.Split(b.text, "\n\n") {
				want := squash(piece)
				if !slices.ContainsFunc(sources, func(src string) bool { return strings.Contains(src, want) }) {
					t.Errorf("%s:%d: this Go snippet is in no Go file of the repository, so nothing compiles it:\n%s", f, b.line, piece)
				}
			}
		}
	}
}

// TestMetaSnippetsDecode: every YAML block of the guides that gives an instance's meta (it starts
// with "meta:") decodes as graylane's meta, so the schema a guide shows is the one graylane reads.
func TestMetaSnippetsDecode(t *testing.T) {
	n := 0
	for _, f := range guides(t) {
		for _, b := range codeBlocks(read(t, f)) {
			if b.lang != "yaml" || !strings.HasPrefix(b.text, "meta:") {
				continue
			}
			var doc struct {
				Meta gray.Meta `yaml:"meta"`
			}
			if err := yaml.Unmarshal([]byte(b.text), &doc); err != nil {
				t.Errorf("%s:%d: %v\n%s", f, b.line, err, b.text)
			}
			if _, err := doc.Meta.Encode(); err != nil {
				t.Errorf("%s:%d: encoding: %v", f, b.line, err)
			}
			n++
		}
	}
	if n < 4 {
		t.Errorf("only %d meta snippets found", n)
	}
}

// squash trims each line and drops empty ones, so that a snippet matches its source whatever
// its indentation there.
func squash(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n"
}

// TestChineseGuidesShowTheSameCode: each English guide has its Chinese counterpart, and their code
// blocks are the same, in the same order: a command or snippet changed in one language is changed
// in the other.
func TestChineseGuidesShowTheSameCode(t *testing.T) {
	pairs := [][2]string{{"README.md", "README.zh-CN.md"}}
	english, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range english {
		pairs = append(pairs, [2]string{"docs/" + f, "docs/zh-CN/" + f})
	}
	if len(pairs) < 8 {
		t.Fatalf("only %d guides found", len(pairs))
	}
	for _, p := range pairs {
		en, zh := codeBlocks(read(t, p[0])), codeBlocks(read(t, p[1]))
		for i := range max(len(en), len(zh)) {
			switch {
			case i >= len(zh):
				t.Errorf("%s:%d: code block missing from %s", p[0], en[i].line, p[1])
			case i >= len(en):
				t.Errorf("%s:%d: code block not in %s", p[1], zh[i].line, p[0])
			case en[i].lang != zh[i].lang || en[i].text != zh[i].text:
				t.Errorf("code block %d differs: %s:%d and %s:%d\n--- %s\n%s--- %s\n%s", i+1,
					p[0], en[i].line, p[1], zh[i].line, p[0], en[i].text, p[1], zh[i].text)
			}
		}
		if !strings.Contains(read(t, p[0]), "]("+filepath.Base(p[1])+")") && !strings.Contains(read(t, p[0]), "](zh-CN/"+filepath.Base(p[1])+")") {
			t.Errorf("%s does not link to %s", p[0], p[1])
		}
		if !strings.Contains(read(t, p[1]), "]("+filepath.Base(p[0])+")") && !strings.Contains(read(t, p[1]), "](../"+filepath.Base(p[0])+")") {
			t.Errorf("%s does not link to %s", p[1], p[0])
		}
	}
}
