package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const committed = "../architecture.svg"

// TestSVGIsUpToDate keeps the picture equal to its source: the committed docs/architecture.svg must
// be what `go run ./docs/architecture` draws from diagram.txt.
func TestSVGIsUpToDate(t *testing.T) {
	src, err := os.ReadFile("diagram.txt")
	if err != nil {
		t.Fatal(err)
	}
	want, err := render(src)
	if err != nil {
		t.Fatalf("diagram.txt does not draw:\n%v", err)
	}
	got, err := os.ReadFile(committed)
	if err != nil {
		t.Fatalf("%v: run `go run ./docs/architecture` from the repository and commit docs/architecture.svg", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < max(len(gl), len(wl)); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("docs/architecture.svg differs from what diagram.txt draws: run `go run ./docs/architecture` from the repository and commit it.\nfirst difference, line %d:\ncommitted: %s\ndrawn:     %s", i+1, g, w)
			}
		}
	}
}

// TestSVGParses checks that the committed picture is well-formed XML with an svg root of the
// canvas's size, and that it loads nothing from elsewhere (GitHub shows it as an image).
func TestSVGParses(t *testing.T) {
	data, err := os.ReadFile(committed)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	var root *xml.StartElement
	elements := map[string]int{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("docs/architecture.svg is not well-formed XML: %v", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if root == nil {
			root = &se
		}
		elements[se.Name.Local]++
		for _, a := range se.Attr {
			if a.Name.Local == "href" || strings.Contains(a.Value, "http") && a.Name.Local != "xmlns" {
				t.Errorf("<%s %s=%q>: the picture must not load anything", se.Name.Local, a.Name.Local, a.Value)
			}
		}
		if se.Name.Local == "script" || se.Name.Local == "foreignObject" || se.Name.Local == "image" {
			t.Errorf("<%s> in the picture", se.Name.Local)
		}
	}
	if root == nil || root.Name.Local != "svg" || root.Name.Space != "http://www.w3.org/2000/svg" {
		t.Fatalf("the root element is %v, want svg in the SVG namespace", root)
	}
	attr := map[string]string{}
	for _, a := range root.Attr {
		attr[a.Name.Local] = a.Value
	}
	if attr["width"] == "" || attr["height"] == "" || attr["viewBox"] != "0 0 "+attr["width"]+" "+attr["height"] {
		t.Errorf("svg width %q, height %q, viewBox %q: want all three, matching", attr["width"], attr["height"], attr["viewBox"])
	}
	if elements["title"] != 1 || elements["text"] < 50 || elements["marker"] == 0 {
		t.Errorf("the picture has %d titles, %d texts and %d markers", elements["title"], elements["text"], elements["marker"])
	}
}

// TestUntidyPicturesAreRefused checks that the program names the line of a description whose
// text would not fit, overlap or be crossed.
func TestUntidyPicturesAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"text wider than its box", "canvas 200 100\nbox a 10 10 60 30 component\n    text \"far too long for this box\"\n",
			`diagram.txt:2: "far too long for this box" does not fit in box a`},
		{"text taller than its box", "canvas 200 100\nbox a 10 10 120 20 component\n    text \"one\"\n    text \"two\"\n",
			`diagram.txt:2: "one" does not fit in box a`},
		{"overlapping boxes", "canvas 200 100\nbox a 10 10 60 30 component\nbox b 50 20 60 30 component\n",
			"diagram.txt:3: box b overlaps box a"},
		{"arrow through a box", "canvas 300 100\nbox a 10 10 40 30 component\nbox b 100 10 40 30 component\nbox c 200 10 40 30 component\narrow request a.right c.left\n",
			"diagram.txt:5: the arrow runs through box b"},
		{"label over text", "canvas 300 100\nbox a 10 40 40 30 component\nbox b 200 40 40 30 component\narrow request a.right b.left label=\"call\" at=above\nnote 125 42 text \"here\" anchor=middle\n",
			`label "call" overlaps line 5, note "here"`},
		{"past the canvas", "canvas 100 100\nbox a 10 10 120 30 component\n",
			"diagram.txt:2: box a goes past the canvas"},
		{"unknown style", "canvas 100 100\nbox a 10 10 20 30 shiny\n",
			`diagram.txt:2: unknown box style "shiny"`},
		{"unknown box", "canvas 100 100\nbox a 10 10 20 30 component\narrow request a.right b.left\n",
			`diagram.txt:3: no box "b"`},
		{"anchor off the side", "canvas 100 100\nbox a 10 10 20 30 component\narrow request a.top@50 5,5\n",
			"diagram.txt:3: a.top@50: x=50 is not on the side of a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render([]byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestDescriptionNamesWhatTheREADMESays guards the words the picture must keep: the lane header
// and the pieces each plane is made of.
func TestDescriptionNamesWhatTheREADMESays(t *testing.T) {
	src, err := os.ReadFile(filepath.Clean("diagram.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"x-md-global-gray-lane", "proxy-rewrite", "ext-plugin-pre-req", "traffic-split",
		"graylane apisix sync", "graylane selector", "`gray`", "canary=true", "bluegreen=", "weight=", "match=", "lane=",
		"`rollout`", "graylane portal", "unix|socket"} {
		if !strings.Contains(string(src), w) {
			t.Errorf("diagram.txt no longer says %q", w)
		}
	}
}
