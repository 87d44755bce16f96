// Command architecture draws docs/architecture.svg, the architecture picture of the README, from
// docs/architecture/diagram.txt. Regenerate it after editing the description:
//
//	go run ./docs/architecture
//
// diagram.txt says where every box, arrow and label is (its header explains the syntax); this file
// holds the look (colours, fonts, arrow kinds) and the drawing. The program refuses to write a
// picture whose text does not fit its box, whose labels overlap, or whose arrows cross text or run
// through a box, and says which line of diagram.txt to change. main_test.go fails when the
// committed SVG differs from what this program draws.
//
//go:generate go run .
package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// The look. Colours are chosen to read on the white background the picture carries, so that it
// looks the same in GitHub's light and dark modes.
const (
	sansFont = "-apple-system, BlinkMacSystemFont, Segoe UI, Helvetica, Arial, sans-serif"
	monoFont = "ui-monospace, SFMono-Regular, Menlo, Consolas, Liberation Mono, monospace"
	inkColor = "#1f2328"
	dimColor = "#57606a"
)

// boxStyle is how a box looks. A box with top set lays its text out from the top-left corner (a
// panel holding other boxes); otherwise its text is centred.
type boxStyle struct {
	fill, stroke string
	width        float64 // stroke width
	radius       float64
	dash         string
	top          bool
}

var boxStyles = map[string]boxStyle{
	"plane":     {fill: "#f6f8fa", stroke: "#d0d7de", width: 1, radius: 12, top: true},
	"group":     {fill: "#ffffff", stroke: "#8c959f", width: 1.2, radius: 9, top: true},
	"component": {fill: "#ffffff", stroke: "#57606a", width: 1.2, radius: 7},
	"step":      {fill: "#f6f8fa", stroke: "#afb8c1", width: 1, radius: 5},
	"actor":     {fill: "#ddf4ff", stroke: "#0969da", width: 1.2, radius: 7},
	"consul":    {fill: "#ffeff7", stroke: "#bf3989", width: 1.2, radius: 7},
	"core":      {fill: "#fbefff", stroke: "#8250df", width: 1.8, radius: 7},
	"stable":    {fill: "#e6ebf1", stroke: "#5b7083", width: 1.4, radius: 6},
	"canary":    {fill: "#fff1e5", stroke: "#e16f24", width: 1.8, radius: 6},
	"note":      {fill: "#ffffff", stroke: "#d0d7de", width: 1, radius: 6, dash: "4 3"},
}

// arrowKind is how an arrow looks; its label takes the arrow's colour.
type arrowKind struct {
	color string
	width float64
	dash  string
}

var arrowKinds = map[string]arrowKind{
	"request": {color: "#1f2328", width: 1.6},
	"lane":    {color: "#d15704", width: 2.2},
	"write":   {color: "#0969da", width: 1.6},
	"watch":   {color: "#bf3989", width: 1.4, dash: "6 4"},
	"uses":    {color: "#8250df", width: 2, dash: "1 4"},
	"api":     {color: "#57606a", width: 1.4},
}

// textStyle is one kind of text line.
type textStyle struct {
	size   float64
	bold   bool
	color  string
	height float64 // line height
}

var textStyles = map[string]textStyle{
	"h1":    {size: 19, bold: true, color: inkColor, height: 24},
	"h2":    {size: 14, bold: true, color: inkColor, height: 20},
	"title": {size: 13, bold: true, color: inkColor, height: 17},
	"text":  {size: 12, color: inkColor, height: 15},
	"small": {size: 11, color: dimColor, height: 14},
	"label": {size: 11, color: inkColor, height: 13},
}

const (
	padX        = 8   // horizontal room kept between a box's border and its text
	padY        = 4   // vertical room
	panelInset  = 12  // where a top-aligned box's text starts
	markerLen   = 9   // length of an arrow head
	cornerR     = 8   // radius of an arrow's bends
	labelGap    = 5   // distance between an arrow and its label
	boldFactor  = 1.1 // bold text is this much wider
	monoAdvance = 0.62
)

func main() {
	root, err := moduleRoot()
	if err != nil {
		fail(err)
	}
	src, err := os.ReadFile(filepath.Join(root, "docs", "architecture", "diagram.txt"))
	if err != nil {
		fail(err)
	}
	svg, err := render(src)
	if err != nil {
		fail(err)
	}
	out := filepath.Join(root, "docs", "architecture.svg")
	if err := os.WriteFile(out, svg, 0o644); err != nil {
		fail(err)
	}
	fmt.Println("wrote", out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "architecture:", err)
	os.Exit(1)
}

// moduleRoot is the nearest directory at or above the working directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod at or above the working directory: run from the repository")
		}
		dir = parent
	}
}

// render draws the SVG for a description.
func render(src []byte) ([]byte, error) {
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	d.layout()
	if err := d.check(); err != nil {
		return nil, err
	}
	return d.svg(), nil
}

// The model.

type diagram struct {
	width, height float64
	title, desc   string
	boxes         []*box
	byID          map[string]*box
	arrows        []*arrow
	notes         []*note
}

type box struct {
	id         string
	x, y, w, h float64
	style      string
	lines      []textLine
	at         int      // line of diagram.txt
	placed     []placed // its lines, after layout
}

type textLine struct {
	kind string
	text string
}

// placed is a line of text at its position; y is its baseline.
type placed struct {
	kind   string
	text   string
	x, y   float64
	anchor string // start, middle or end: which point of the line x is
	color  string
	rect   rect // the room the text takes
}

type anchor struct {
	box  *box   // nil for a bare point
	side string // top, bottom, left, right
	pos  *float64
	pt   point
}

type arrow struct {
	kind     string
	from, to anchor
	label    []string
	at       string  // where the label goes: left, right, above, below
	along    float64 // where on the longest stretch, 0 to 1
	mid      *float64
	src      int
	path     []point
	lines    []placed
}

type note struct {
	kind   string
	text   string
	x, y   float64
	anchor string // start, middle, end
	src    int
	placed placed
}

type point struct{ x, y float64 }

type rect struct{ x0, y0, x1, y1 float64 }

func (r rect) intersects(o rect) bool {
	return r.x0 < o.x1 && o.x0 < r.x1 && r.y0 < o.y1 && o.y0 < r.y1
}

func (r rect) contains(o rect) bool {
	return r.x0 <= o.x0 && r.y0 <= o.y0 && o.x1 <= r.x1 && o.y1 <= r.y1
}

func (b *box) rect() rect { return rect{b.x, b.y, b.x + b.w, b.y + b.h} }

// Parsing.

type token struct {
	key, val string // key is empty for a positional token
}

// tokens splits a line into whitespace-separated tokens; "quoted strings" (Go syntax) may hold
// spaces, alone or as the value of key="...". A # outside quotes starts a comment.
func tokens(s string) ([]token, error) {
	var out []token
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		if i == len(s) || s[i] == '#' {
			return out, nil
		}
		start := i
		for i < len(s) && s[i] != ' ' && s[i] != '\t' {
			if s[i] == '"' {
				j := i + 1
				for j < len(s) && s[j] != '"' {
					if s[j] == '\\' {
						j++
					}
					j++
				}
				if j >= len(s) {
					return nil, errors.New("unterminated string")
				}
				i = j + 1
				continue
			}
			i++
		}
		raw := s[start:i]
		var t token
		if k, v, ok := strings.Cut(raw, "="); ok && !strings.HasPrefix(raw, `"`) {
			t.key, raw = k, v
		}
		if strings.HasPrefix(raw, `"`) {
			v, err := strconv.Unquote(raw)
			if err != nil {
				return nil, fmt.Errorf("bad string %s", raw)
			}
			raw = v
		}
		t.val = raw
		out = append(out, t)
	}
}

func parse(src []byte) (*diagram, error) {
	d := &diagram{byID: map[string]*box{}}
	var last *box
	type pendingArrow struct {
		a        *arrow
		from, to string
	}
	var pending []pendingArrow
	for n, line := range strings.Split(string(src), "\n") {
		n++
		errf := func(format string, args ...any) error {
			return fmt.Errorf("diagram.txt:%d: %s", n, fmt.Sprintf(format, args...))
		}
		toks, err := tokens(line)
		if err != nil {
			return nil, errf("%v", err)
		}
		if len(toks) == 0 {
			continue
		}
		indented := line[0] == ' ' || line[0] == '\t'
		pos, opts := split(toks)
		if indented {
			if last == nil {
				return nil, errf("an indented line belongs to a box: put it under one")
			}
			if len(pos) != 2 || len(opts) != 0 {
				return nil, errf(`want: KIND "text" under a box`)
			}
			if _, ok := textStyles[pos[0]]; !ok {
				return nil, errf("unknown text kind %q (one of %s)", pos[0], keys(textStyles))
			}
			last.lines = append(last.lines, textLine{kind: pos[0], text: pos[1]})
			continue
		}
		last = nil
		switch pos[0] {
		case "canvas":
			if len(pos) != 3 {
				return nil, errf("want: canvas WIDTH HEIGHT title=... desc=...")
			}
			if d.width, err = number(pos[1]); err != nil {
				return nil, errf("%v", err)
			}
			if d.height, err = number(pos[2]); err != nil {
				return nil, errf("%v", err)
			}
			d.title, d.desc = opts["title"], opts["desc"]
		case "box":
			if len(pos) != 7 {
				return nil, errf("want: box ID X Y WIDTH HEIGHT STYLE")
			}
			b := &box{id: pos[1], style: pos[6], at: n}
			for i, p := range []*float64{&b.x, &b.y, &b.w, &b.h} {
				if *p, err = number(pos[2+i]); err != nil {
					return nil, errf("%v", err)
				}
			}
			if _, ok := boxStyles[b.style]; !ok {
				return nil, errf("unknown box style %q (one of %s)", b.style, keys(boxStyles))
			}
			if d.byID[b.id] != nil {
				return nil, errf("box %s is defined twice", b.id)
			}
			d.byID[b.id] = b
			d.boxes = append(d.boxes, b)
			last = b
		case "arrow":
			if len(pos) != 4 {
				return nil, errf("want: arrow KIND FROM TO [label=...] [at=...] [along=...] [mid=...]")
			}
			a := &arrow{kind: pos[1], src: n, at: opts["at"], along: 0.5}
			if _, ok := arrowKinds[a.kind]; !ok {
				return nil, errf("unknown arrow kind %q (one of %s)", a.kind, keys(arrowKinds))
			}
			if l := opts["label"]; l != "" {
				a.label = strings.Split(l, "|")
				if !slices.Contains([]string{"left", "right", "above", "below"}, a.at) {
					return nil, errf("a label needs at=left, right, above or below")
				}
			}
			if v, ok := opts["along"]; ok {
				if a.along, err = number(v); err != nil || a.along < 0 || a.along > 1 {
					return nil, errf("along is a fraction from 0 to 1")
				}
			}
			if v, ok := opts["mid"]; ok {
				m, err := number(v)
				if err != nil {
					return nil, errf("%v", err)
				}
				a.mid = &m
			}
			d.arrows = append(d.arrows, a)
			pending = append(pending, pendingArrow{a, pos[2], pos[3]})
		case "note":
			if len(pos) != 5 {
				return nil, errf(`want: note X Y KIND "text" [anchor=start|middle|end]`)
			}
			nt := &note{kind: pos[3], text: pos[4], anchor: "start", src: n}
			if nt.x, err = number(pos[1]); err != nil {
				return nil, errf("%v", err)
			}
			if nt.y, err = number(pos[2]); err != nil {
				return nil, errf("%v", err)
			}
			if _, ok := textStyles[nt.kind]; !ok {
				return nil, errf("unknown text kind %q (one of %s)", nt.kind, keys(textStyles))
			}
			if v, ok := opts["anchor"]; ok {
				if !slices.Contains([]string{"start", "middle", "end"}, v) {
					return nil, errf("anchor is start, middle or end")
				}
				nt.anchor = v
			}
			d.notes = append(d.notes, nt)
		default:
			return nil, errf("unknown statement %q (canvas, box, arrow, note)", pos[0])
		}
		for k := range opts {
			if !allowed[pos[0]][k] {
				return nil, errf("%s takes no option %s=", pos[0], k)
			}
		}
	}
	if d.width == 0 || d.height == 0 {
		return nil, errors.New("diagram.txt: no canvas statement")
	}
	for _, p := range pending {
		var err error
		if p.a.from, err = d.anchor(p.from); err == nil {
			p.a.to, err = d.anchor(p.to)
		}
		if err != nil {
			return nil, fmt.Errorf("diagram.txt:%d: %v", p.a.src, err)
		}
	}
	return d, nil
}

var allowed = map[string]map[string]bool{
	"canvas": {"title": true, "desc": true},
	"box":    {},
	"arrow":  {"label": true, "at": true, "along": true, "mid": true},
	"note":   {"anchor": true},
}

func split(toks []token) (pos []string, opts map[string]string) {
	opts = map[string]string{}
	for _, t := range toks {
		if t.key == "" {
			pos = append(pos, t.val)
		} else {
			opts[t.key] = t.val
		}
	}
	return pos, opts
}

func number(s string) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return v, nil
}

func keys[V any](m map[string]V) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, ", ")
}

// anchor reads ID.SIDE, ID.SIDE@COORD (the point of that side at x or y = COORD) or X,Y.
func (d *diagram) anchor(s string) (anchor, error) {
	if x, y, ok := strings.Cut(s, ","); ok {
		px, err1 := number(x)
		py, err2 := number(y)
		if err1 != nil || err2 != nil {
			return anchor{}, fmt.Errorf("bad point %q", s)
		}
		return anchor{pt: point{px, py}}, nil
	}
	id, side, ok := strings.Cut(s, ".")
	if !ok {
		return anchor{}, fmt.Errorf("%q: want ID.SIDE, ID.SIDE@COORD or X,Y", s)
	}
	b := d.byID[id]
	if b == nil {
		return anchor{}, fmt.Errorf("no box %q", id)
	}
	a := anchor{box: b}
	if side, at, ok := strings.Cut(side, "@"); ok {
		v, err := number(at)
		if err != nil {
			return anchor{}, err
		}
		a.pos = &v
		a.side = side
	} else {
		a.side = side
	}
	switch a.side {
	case "top", "bottom":
		x := b.x + b.w/2
		if a.pos != nil {
			x = *a.pos
		}
		if x <= b.x || x >= b.x+b.w {
			return anchor{}, fmt.Errorf("%s: x=%g is not on the side of %s (%g to %g)", s, x, id, b.x, b.x+b.w)
		}
		a.pt = point{x, b.y}
		if a.side == "bottom" {
			a.pt.y = b.y + b.h
		}
	case "left", "right":
		y := b.y + b.h/2
		if a.pos != nil {
			y = *a.pos
		}
		if y <= b.y || y >= b.y+b.h {
			return anchor{}, fmt.Errorf("%s: y=%g is not on the side of %s (%g to %g)", s, y, id, b.y, b.y+b.h)
		}
		a.pt = point{b.x, y}
		if a.side == "right" {
			a.pt.x = b.x + b.w
		}
	default:
		return anchor{}, fmt.Errorf("%s: the side is top, bottom, left or right", s)
	}
	return a, nil
}

func (a anchor) vertical() bool { return a.side == "top" || a.side == "bottom" }

// Layout.

// segments splits a line at backquotes: the odd segments are code, set in the monospace font.
func segments(s string) []string { return strings.Split(s, "`") }

// sansWidths are DejaVu Sans's advance widths in thousandths of an em for ' ' to '~'. DejaVu Sans
// is wider than the fonts a browser picks first (Segoe UI, Helvetica, Arial), so text measured with
// it fits with any of them.
var sansWidths = [95]float64{
	318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337, // space to /
	636, 636, 636, 636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531, // 0 to ?
	1000, 684, 686, 698, 770, 632, 575, 775, 752, 295, 295, 656, 557, 863, 748, 787, // @ to O
	603, 787, 695, 635, 611, 732, 684, 989, 685, 611, 685, 390, 337, 390, 838, 500, // P to _
	500, 613, 635, 550, 635, 615, 352, 635, 634, 278, 278, 579, 278, 974, 634, 612, // ` to o
	635, 635, 411, 521, 392, 634, 592, 818, 592, 592, 525, 636, 337, 636, 838, // p to ~
}

var otherWidths = map[rune]float64{'·': 318, '→': 838, '←': 838, '…': 1000, '–': 500, '—': 1000, '×': 838}

// textWidth estimates, on the generous side, how wide a line is drawn.
func textWidth(s string, st textStyle) float64 {
	var w float64
	for i, seg := range segments(s) {
		for _, r := range seg {
			if i%2 == 1 {
				w += monoAdvance * st.size
				continue
			}
			adv := 1000.0
			if r >= ' ' && r <= '~' {
				adv = sansWidths[r-' ']
			} else if v, ok := otherWidths[r]; ok {
				adv = v
			}
			f := 1.0
			if st.bold {
				f = boldFactor
			}
			w += adv / 1000 * st.size * f
		}
	}
	return w
}

// place puts a line's baseline so that the line's box spans top to top+height.
func place(kind, text string, x, top float64, anchor string) placed {
	st := textStyles[kind]
	w := textWidth(text, st)
	p := placed{kind: kind, text: text, x: x, y: top + st.height/2 + 0.35*st.size, anchor: anchor, color: st.color}
	x0 := x
	switch anchor {
	case "middle":
		x0 = x - w/2
	case "end":
		x0 = x - w
	}
	p.rect = rect{x0, top, x0 + w, top + st.height}
	return p
}

func (d *diagram) layout() {
	for _, b := range d.boxes {
		st := boxStyles[b.style]
		var total float64
		for _, l := range b.lines {
			total += textStyles[l.kind].height
		}
		top := b.y + (b.h-total)/2
		if st.top {
			top = b.y + panelInset - 4
		}
		for _, l := range b.lines {
			if st.top {
				b.placed = append(b.placed, place(l.kind, l.text, b.x+panelInset, top, "start"))
			} else {
				b.placed = append(b.placed, place(l.kind, l.text, b.x+b.w/2, top, "middle"))
			}
			top += textStyles[l.kind].height
		}
	}
	for _, a := range d.arrows {
		a.path = route(a)
		if len(a.label) > 0 {
			a.lines = labelLines(a)
		}
	}
	for _, n := range d.notes {
		n.placed = place(n.kind, n.text, n.x, n.y-textStyles[n.kind].height/2, n.anchor)
	}
}

// route is the arrow's path: straight when its ends line up, else with right-angled bends.
func route(a *arrow) []point {
	p, q := a.from.pt, a.to.pt
	if p.x == q.x || p.y == q.y {
		return []point{p, q}
	}
	fromV := a.from.vertical() || (a.from.box == nil && a.to.box != nil && !a.to.vertical())
	toV := a.to.vertical() || (a.to.box == nil && a.from.box != nil && !a.from.vertical())
	switch {
	case fromV && toV:
		m := (p.y + q.y) / 2
		if a.mid != nil {
			m = *a.mid
		}
		return []point{p, {p.x, m}, {q.x, m}, q}
	case !fromV && !toV:
		m := (p.x + q.x) / 2
		if a.mid != nil {
			m = *a.mid
		}
		return []point{p, {m, p.y}, {m, q.y}, q}
	case fromV:
		return []point{p, {p.x, q.y}, q}
	default:
		return []point{p, {q.x, p.y}, q}
	}
}

// labelLines places an arrow's label beside the longest stretch of its path.
func labelLines(a *arrow) []placed {
	best, bestLen := 0, -1.0
	for i := 0; i+1 < len(a.path); i++ {
		if l := dist(a.path[i], a.path[i+1]); l > bestLen {
			best, bestLen = i, l
		}
	}
	p, q := a.path[best], a.path[best+1]
	m := point{p.x + (q.x-p.x)*a.along, p.y + (q.y-p.y)*a.along}
	var w, h float64
	for _, l := range a.label {
		st := textStyles["label"]
		w = max(w, textWidth(l, st))
		h += st.height
	}
	var x0, y0 float64
	switch a.at {
	case "right":
		x0, y0 = m.x+labelGap, m.y-h/2
	case "left":
		x0, y0 = m.x-labelGap-w, m.y-h/2
	case "above":
		x0, y0 = m.x-w/2, m.y-labelGap-h
	case "below":
		x0, y0 = m.x-w/2, m.y+labelGap
	}
	var out []placed
	for _, l := range a.label {
		var pl placed
		switch a.at {
		case "left":
			pl = place("label", l, x0+w, y0, "end")
		case "above", "below":
			pl = place("label", l, x0+w/2, y0, "middle")
		default:
			pl = place("label", l, x0, y0, "start")
		}
		pl.color = arrowKinds[a.kind].color
		out = append(out, pl)
		y0 += textStyles["label"].height
	}
	return out
}

func dist(p, q point) float64 { return math.Hypot(q.x-p.x, q.y-p.y) }

// Checks: what makes a picture untidy is refused with the line of diagram.txt to change.

func (d *diagram) check() error {
	var errs []error
	canvas := rect{0, 0, d.width, d.height}
	type ink struct {
		r     rect
		owner *box // nil for labels and notes
		what  string
	}
	var inks []ink
	for _, b := range d.boxes {
		if !canvas.contains(b.rect()) {
			errs = append(errs, fmt.Errorf("diagram.txt:%d: box %s goes past the canvas", b.at, b.id))
		}
		inner := rect{b.x + padX, b.y + padY, b.x + b.w - padX, b.y + b.h - padY}
		for _, p := range b.placed {
			if !inner.contains(p.rect) {
				errs = append(errs, fmt.Errorf("diagram.txt:%d: %q does not fit in box %s (needs %.0f x %.0f at most; widen or heighten the box, or shorten the text)",
					b.at, p.text, b.id, p.rect.x1-p.rect.x0+2*padX, p.rect.y1-p.rect.y0))
			}
			inks = append(inks, ink{p.rect, b, fmt.Sprintf("line %d, %q in box %s", b.at, p.text, b.id)})
		}
	}
	for i, b := range d.boxes {
		for _, c := range d.boxes[i+1:] {
			if b.rect().intersects(c.rect()) && !b.rect().contains(c.rect()) && !c.rect().contains(b.rect()) {
				errs = append(errs, fmt.Errorf("diagram.txt:%d: box %s overlaps box %s (line %d)", c.at, c.id, b.id, b.at))
			}
		}
	}
	for _, a := range d.arrows {
		for _, p := range a.lines {
			inks = append(inks, ink{p.rect, nil, fmt.Sprintf("line %d, label %q", a.src, p.text)})
		}
	}
	for _, n := range d.notes {
		inks = append(inks, ink{n.placed.rect, nil, fmt.Sprintf("line %d, note %q", n.src, n.text)})
	}
	for i, t := range inks {
		if !canvas.contains(t.r) {
			errs = append(errs, fmt.Errorf("%s goes past the canvas", t.what))
		}
		for _, u := range inks[i+1:] {
			if t.r.intersects(u.r) {
				errs = append(errs, fmt.Errorf("%s overlaps %s", t.what, u.what))
			}
		}
		for _, b := range d.boxes {
			if b == t.owner || (t.owner != nil && b.rect().contains(t.owner.rect())) {
				continue
			}
			if t.r.intersects(b.rect()) && (t.owner != nil || !b.rect().contains(t.r) || len(b.lines) > 0 && !boxStyles[b.style].top) {
				errs = append(errs, fmt.Errorf("%s runs into box %s (line %d)", t.what, b.id, b.at))
			}
		}
	}
	for _, a := range d.arrows {
		for i := 0; i+1 < len(a.path); i++ {
			p, q := a.path[i], a.path[i+1]
			seg := rect{min(p.x, q.x), min(p.y, q.y), max(p.x, q.x), max(p.y, q.y)}
			if !canvas.contains(seg) {
				errs = append(errs, fmt.Errorf("diagram.txt:%d: the arrow goes past the canvas", a.src))
			}
			for _, t := range inks {
				if segmentHits(seg, t.r) {
					errs = append(errs, fmt.Errorf("diagram.txt:%d: the arrow crosses %s", a.src, t.what))
				}
			}
			for _, b := range d.boxes {
				if b == a.from.box || b == a.to.box || boxStyles[b.style].top {
					continue
				}
				if segmentHits(seg, b.rect()) {
					errs = append(errs, fmt.Errorf("diagram.txt:%d: the arrow runs through box %s", a.src, b.id))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// segmentHits reports whether a horizontal or vertical segment (as its bounding rect) passes
// through the inside of r.
func segmentHits(seg, r rect) bool {
	return seg.x0 < r.x1 && r.x0 < seg.x1 && seg.y0 < r.y1 && r.y0 < seg.y1
}

// Drawing.

func (d *diagram) svg() []byte {
	var b bytes.Buffer
	f := num
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%s" height="%s" viewBox="0 0 %s %s" role="img" aria-labelledby="title desc" font-family="%s">`+"\n",
		f(d.width), f(d.height), f(d.width), f(d.height), sansFont)
	fmt.Fprintf(&b, "<title id=\"title\">%s</title>\n<desc id=\"desc\">%s</desc>\n", esc(d.title), esc(d.desc))
	b.WriteString("<!-- Generated by `go run ./docs/architecture` from docs/architecture/diagram.txt. Do not edit. -->\n")
	b.WriteString("<defs>\n")
	var used []string
	for _, a := range d.arrows {
		if !slices.Contains(used, a.kind) {
			used = append(used, a.kind)
		}
	}
	slices.Sort(used)
	for _, k := range used {
		fmt.Fprintf(&b, `<marker id="head-%s" viewBox="0 0 10 10" refX="1" refY="5" markerWidth="%s" markerHeight="%s" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="%s"/></marker>`+"\n",
			k, f(markerLen+1), f(markerLen+1), arrowKinds[k].color)
	}
	b.WriteString("</defs>\n")
	fmt.Fprintf(&b, `<rect width="%s" height="%s" rx="14" fill="#ffffff"/>`+"\n", f(d.width), f(d.height))
	for _, x := range d.boxes {
		st := boxStyles[x.style]
		fmt.Fprintf(&b, `<rect x="%s" y="%s" width="%s" height="%s" rx="%s" fill="%s" stroke="%s" stroke-width="%s"`,
			f(x.x), f(x.y), f(x.w), f(x.h), f(st.radius), st.fill, st.stroke, f(st.width))
		if st.dash != "" {
			fmt.Fprintf(&b, ` stroke-dasharray="%s"`, st.dash)
		}
		b.WriteString("/>\n")
	}
	for _, a := range d.arrows {
		k := arrowKinds[a.kind]
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="%s"`, pathData(a.path), k.color, f(k.width))
		if k.dash != "" {
			fmt.Fprintf(&b, ` stroke-dasharray="%s" stroke-linecap="round"`, k.dash)
		}
		fmt.Fprintf(&b, ` marker-end="url(#head-%s)"/>`+"\n", a.kind)
	}
	for _, x := range d.boxes {
		for _, p := range x.placed {
			writeText(&b, p)
		}
	}
	for _, a := range d.arrows {
		for _, p := range a.lines {
			writeText(&b, p)
		}
	}
	for _, n := range d.notes {
		writeText(&b, n.placed)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// pathData draws a path with rounded bends, shortened at its end to leave room for the head.
func pathData(pts []point) string {
	pts = slices.Clone(pts)
	n := len(pts)
	last, prev := pts[n-1], pts[n-2]
	if l := dist(prev, last); l > 0 {
		cut := min(markerLen, l)
		pts[n-1] = point{last.x - (last.x-prev.x)/l*cut, last.y - (last.y-prev.y)/l*cut}
	}
	var s strings.Builder
	fmt.Fprintf(&s, "M%s,%s", num(pts[0].x), num(pts[0].y))
	for i := 1; i < n-1; i++ {
		a, c, e := pts[i-1], pts[i], pts[i+1]
		r := min(cornerR, dist(a, c)/2, dist(c, e)/2)
		p1 := toward(c, a, r)
		p2 := toward(c, e, r)
		fmt.Fprintf(&s, " L%s,%s Q%s,%s %s,%s", num(p1.x), num(p1.y), num(c.x), num(c.y), num(p2.x), num(p2.y))
	}
	fmt.Fprintf(&s, " L%s,%s", num(pts[n-1].x), num(pts[n-1].y))
	return s.String()
}

// toward is the point at distance r from c in the direction of p.
func toward(c, p point, r float64) point {
	l := dist(c, p)
	if l == 0 {
		return c
	}
	return point{c.x + (p.x-c.x)/l*r, c.y + (p.y-c.y)/l*r}
}

func writeText(b *bytes.Buffer, p placed) {
	st := textStyles[p.kind]
	fmt.Fprintf(b, `<text x="%s" y="%s" font-size="%s" fill="%s"`, num(p.x), num(p.y), num(st.size), p.color)
	if st.bold {
		b.WriteString(` font-weight="bold"`)
	}
	if p.anchor != "start" {
		fmt.Fprintf(b, ` text-anchor="%s"`, p.anchor)
	}
	b.WriteString(">")
	for i, seg := range segments(p.text) {
		if seg == "" {
			continue
		}
		if i%2 == 1 {
			fmt.Fprintf(b, `<tspan font-family="%s">%s</tspan>`, monoFont, esc(seg))
		} else {
			b.WriteString(esc(seg))
		}
	}
	b.WriteString("</text>\n")
}

func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

func esc(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '&':
			b.WriteString("&amp;")
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '"':
			b.WriteString("&quot;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
