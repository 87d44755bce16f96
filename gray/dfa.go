package gray

// A deterministic automaton for yes/no regexp matching on the request path.
//
// Matching only asks whether a regular expression matches somewhere in a value, so no capture
// groups and no leftmost-first priorities are needed: a set of NFA threads answers exactly. The set
// construction is done once, when meta is decoded: the program that regexp/syntax compiles is
// explored state by state (a state is the sorted set of threads after their empty transitions), over
// classes of runes that every instruction treats alike. Unanchored search adds the start threads at
// every position. Each state records whether it has matched already and whether it matches at the
// end of the input ($). A match then costs one table lookup per byte for ASCII input (plus a UTF-8
// decode and a binary search per non-ASCII rune) and allocates nothing.
//
// Expressions the construction does not cover fall back to regexp: case folding, word boundaries,
// multi-line anchors, and automata above maxDFAStates states or maxDFACells table cells.

import (
	"regexp"
	"regexp/syntax"
	"slices"
	"unicode/utf8"
)

const (
	maxDFAStates = 1024
	maxDFACells  = 1 << 16
	maxDFAInsts  = 2000
	// maxDFAWork bounds the instructions the construction may visit, so that meta from outside
	// cannot stall a snapshot build: beyond it the expression runs on regexp.
	maxDFAWork = 1 << 21
)

type dfa struct {
	ascii  [utf8.RuneSelf]uint16 // class of each ASCII byte
	bounds []rune                // class i covers [bounds[i], bounds[i+1])
	nclass int
	// trans maps state*nclass + class to the next state's row offset (next*nclass), with the next
	// state's flags in the top bits, so that each byte costs one load and one branch.
	trans      []uint32
	startNow   bool   // the start state has matched already
	acceptEnd  []bool // by state: it matches if the input ends here
	emptyMatch bool   // the answer for the empty input
}

const (
	flagAccept = 1 << 31 // the state has matched: the answer is yes whatever follows
	flagDead   = 1 << 30 // no thread is left and none can start: the answer is no
	flagMask   = flagAccept | flagDead
)

// compileDFA builds the automaton for expr, or returns nil when the expression is not covered.
func compileDFA(expr string, re *regexp.Regexp) *dfa {
	tree, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil
	}
	prog, err := syntax.Compile(tree.Simplify())
	if err != nil || len(prog.Inst) > maxDFAInsts {
		return nil
	}
	for _, inst := range prog.Inst {
		switch inst.Op {
		case syntax.InstRune:
			if syntax.Flags(inst.Arg)&syntax.FoldCase != 0 {
				return nil
			}
		case syntax.InstEmptyWidth:
			if syntax.EmptyOp(inst.Arg)&^(syntax.EmptyBeginText|syntax.EmptyEndText) != 0 {
				return nil
			}
		}
	}
	b := &dfaBuilder{prog: prog, index: map[string]uint16{}, work: maxDFAWork, mark: make([]uint32, len(prog.Inst))}
	b.classes()
	d := &dfa{bounds: b.bounds, nclass: len(b.bounds) - 1, emptyMatch: re.MatchString("")}
	for c := rune(0); c < utf8.RuneSelf; c++ {
		d.ascii[c] = uint16(classOf(b.bounds, c))
	}
	first, ok := b.state(b.closure(nil, []uint32{uint32(prog.Start)}, true))
	if !ok || first != 0 {
		return nil
	}
	var next []uint16
	for s := 0; s < len(b.states); s++ {
		if len(b.states)*d.nclass > maxDFACells {
			return nil
		}
		for c := 0; c < d.nclass; c++ {
			n, ok := b.state(b.step(b.states[s], b.bounds[c]))
			if !ok || b.work < 0 {
				return nil
			}
			next = append(next, n)
		}
	}
	var acceptNow, dead []bool
	for _, threads := range b.states {
		now, end := false, false
		for _, pc := range threads {
			switch inst := &prog.Inst[pc]; inst.Op {
			case syntax.InstMatch:
				now = true
			case syntax.InstEmptyWidth: // waiting for the end of the input
				if syntax.EmptyOp(inst.Arg)&syntax.EmptyBeginText == 0 && b.matchesAtEnd(inst.Out) {
					end = true
				}
			}
		}
		acceptNow = append(acceptNow, now)
		d.acceptEnd = append(d.acceptEnd, now || end)
		dead = append(dead, len(threads) == 0 && len(b.restart) == 0)
	}
	d.startNow = acceptNow[0]
	for _, n := range next {
		v := uint32(n) * uint32(d.nclass)
		if acceptNow[n] {
			v |= flagAccept
		} else if dead[n] {
			v |= flagDead
		}
		d.trans = append(d.trans, v)
	}
	return d
}

func (d *dfa) match(s string) bool {
	if s == "" {
		return d.emptyMatch
	}
	if d.startNow {
		return true
	}
	row := uint32(0)
	for i := 0; i < len(s); {
		var class uint32
		if c := s[i]; c < utf8.RuneSelf {
			class = uint32(d.ascii[c])
			i++
		} else {
			r, w := utf8.DecodeRuneInString(s[i:])
			class = uint32(classOf(d.bounds, r))
			i += w
		}
		v := d.trans[row+class]
		if v&flagMask != 0 {
			return v&flagAccept != 0
		}
		row = v
	}
	return d.acceptEnd[row/uint32(d.nclass)]
}

// classOf returns the class of r: the interval of bounds that holds it.
func classOf(bounds []rune, r rune) int {
	lo, hi := 0, len(bounds)-1
	for lo+1 < hi {
		mid := (lo + hi) / 2
		if bounds[mid] <= r {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

type dfaBuilder struct {
	prog    *syntax.Prog
	bounds  []rune
	states  [][]uint32
	index   map[string]uint16
	restart []uint32 // the start threads away from the beginning of the text
	work    int      // instructions the construction may still visit
	mark    []uint32 // per instruction: the generation that last visited it (see closure)
	gen     uint32
	stack   []uint32
}

// classes splits the runes into intervals that every rune instruction treats alike.
func (b *dfaBuilder) classes() {
	cuts := map[rune]bool{0: true, utf8.MaxRune + 1: true}
	for _, inst := range b.prog.Inst {
		switch inst.Op {
		case syntax.InstRune:
			for i := 0; i+1 < len(inst.Rune); i += 2 {
				cuts[inst.Rune[i]], cuts[inst.Rune[i+1]+1] = true, true
			}
			if len(inst.Rune) == 1 {
				cuts[inst.Rune[0]], cuts[inst.Rune[0]+1] = true, true
			}
		case syntax.InstRune1:
			cuts[inst.Rune[0]], cuts[inst.Rune[0]+1] = true, true
		case syntax.InstRuneAnyNotNL:
			cuts['\n'], cuts['\n'+1] = true, true
		}
	}
	for r := range cuts {
		b.bounds = append(b.bounds, r)
	}
	slices.Sort(b.bounds)
	b.restart = b.closure(nil, []uint32{uint32(b.prog.Start)}, false)
}

// closure follows empty transitions from pcs and adds the threads that wait for a rune, the match,
// or the end of the text to set, which it returns sorted and without repeats.
func (b *dfaBuilder) closure(set []uint32, pcs []uint32, atBegin bool) []uint32 {
	b.gen += 2 // gen marks visited instructions, gen+1 those already in set
	inSet, visited := b.gen+1, b.gen
	for _, pc := range set {
		b.mark[pc] = inSet
	}
	add := func(pc uint32) {
		if b.mark[pc] != inSet {
			b.mark[pc] = inSet
			set = append(set, pc)
		}
	}
	stack := append(b.stack[:0], pcs...)
	for len(stack) > 0 {
		pc := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if b.mark[pc] == visited || b.mark[pc] == inSet { // empty transitions can loop ("(?:^)+")
			continue
		}
		b.work--
		inst := &b.prog.Inst[pc]
		switch inst.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			b.mark[pc] = visited
			stack = append(stack, inst.Out, inst.Arg)
		case syntax.InstCapture, syntax.InstNop:
			b.mark[pc] = visited
			stack = append(stack, inst.Out)
		case syntax.InstEmptyWidth:
			op := syntax.EmptyOp(inst.Arg)
			switch {
			case op&syntax.EmptyBeginText != 0 && !atBegin:
				b.mark[pc] = visited
			case op&syntax.EmptyEndText != 0:
				add(pc)
			default:
				b.mark[pc] = visited
				stack = append(stack, inst.Out)
			}
		case syntax.InstFail:
			b.mark[pc] = visited
		default: // runes and the match
			add(pc)
		}
	}
	b.stack = stack
	slices.Sort(set)
	return set
}

// step returns the threads after consuming a rune of the class that starts at r, with the start
// threads added for a match that begins after it.
func (b *dfaBuilder) step(threads []uint32, r rune) []uint32 {
	var next []uint32
	for _, pc := range threads {
		inst := &b.prog.Inst[pc]
		switch inst.Op {
		case syntax.InstMatch:
			next = append(next, pc) // a match stays a match
		case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
			if inst.MatchRune(r) {
				next = append(next, inst.Out)
			}
		}
	}
	return b.closure(slices.Clone(b.restart), next, false)
}

// matchesAtEnd reports whether the match is reachable from pc by empty transitions at the end of a
// non-empty text.
func (b *dfaBuilder) matchesAtEnd(pc uint32) bool {
	seen := map[uint32]bool{}
	stack := []uint32{pc}
	for len(stack) > 0 {
		pc := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[pc] {
			continue
		}
		seen[pc] = true
		switch inst := &b.prog.Inst[pc]; inst.Op {
		case syntax.InstMatch:
			return true
		case syntax.InstAlt, syntax.InstAltMatch:
			stack = append(stack, inst.Out, inst.Arg)
		case syntax.InstCapture, syntax.InstNop:
			stack = append(stack, inst.Out)
		case syntax.InstEmptyWidth:
			if syntax.EmptyOp(inst.Arg)&syntax.EmptyBeginText == 0 {
				stack = append(stack, inst.Out)
			}
		}
	}
	return false
}

// state returns the number of a thread set, adding it when new; false when there are too many.
func (b *dfaBuilder) state(threads []uint32) (uint16, bool) {
	key := make([]byte, 0, 2*len(threads))
	for _, pc := range threads {
		key = append(key, byte(pc), byte(pc>>8)) // programs have at most maxDFAInsts instructions
	}
	if n, ok := b.index[string(key)]; ok {
		return n, true
	}
	if len(b.states) >= maxDFAStates {
		return 0, false
	}
	n := uint16(len(b.states))
	b.states = append(b.states, threads)
	b.index[string(key)] = n
	return n, true
}
