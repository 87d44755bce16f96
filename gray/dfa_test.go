package gray

import (
	"regexp"
	"testing"
	"time"
)

var dfaExprs = []string{
	`^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$`,
	`^[0-9]+7$`, `^(gold|platinum)$`, `^t-(1|2)$`, `^/user\.v1\.User/(Get|List)`, `^/v[0-9]+/`,
	`abc`, `a+b*c?`, `^$`, ``, `$`, `^`, `x*`, `(a|ab)(c|bcd)(d*)`, `[^a-c]z`, `.`, `(?s:.)x`,
	`灰度-[0-9]{2,3}`, `\p{Han}+`, `[\x{100}-\x{10FFFF}]`, `a{3}`, `^a|b$`, `(?:^|;)\s*uid=42(?:;|$)`,
	`\d{3}-\d{4}`, `[[:alpha:]]+@`, `\Aab\z`, `(?U)a+?b`,
}

var dfaInputs = []string{
	"", "a", "abc", "xabcx", "1007", "1008", "gold", "golden", "t-1", "t-3", "/user.v1.User/GetUser",
	"/v2/items", "email=li@some-company-name.com; lang=zh", "lang=zh; email=li@some-company-name.com",
	"email=li@some-company-nameXcom", "灰度-123", "灰度-1", "é", "\xff\xfe", "a\nb", "\n", "aaab", "ab",
	"abcd", "zz", "x; uid=42", "uid=42;x", "555-1234", "foo@", "ab\n",
}

// TestDFAAgreesWithRegexp compares the automaton with regexp on a grid of expressions and inputs,
// and checks which expressions it covers.
func TestDFAAgreesWithRegexp(t *testing.T) {
	covered := 0
	for _, expr := range dfaExprs {
		re := regexp.MustCompile(expr)
		d := compileDFA(expr, re)
		if d == nil {
			continue
		}
		covered++
		for _, in := range dfaInputs {
			if got, want := d.match(in), re.MatchString(in); got != want {
				t.Errorf("%q on %q: automaton %v, regexp %v", expr, in, got, want)
			}
		}
	}
	if covered < len(dfaExprs)-1 {
		t.Errorf("only %d of %d expressions got an automaton", covered, len(dfaExprs))
	}
	for _, expr := range []string{`(?i)abc`, `\bword\b`, `(?m)^a$`} {
		if compileDFA(expr, regexp.MustCompile(expr)) != nil {
			t.Errorf("%q should fall back to regexp", expr)
		}
	}
}

// FuzzDFA: for any expression the automaton covers and any input, it answers as regexp does.
func FuzzDFA(f *testing.F) {
	for i, expr := range dfaExprs {
		f.Add(expr, dfaInputs[i%len(dfaInputs)])
	}
	f.Fuzz(func(t *testing.T, expr, in string) {
		if len(expr) > 64 {
			return
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			return
		}
		d := compileDFA(expr, re)
		if d == nil {
			return
		}
		if got, want := d.match(in), re.MatchString(in); got != want {
			t.Fatalf("%q on %q: automaton %v, regexp %v", expr, in, got, want)
		}
	})
}

func BenchmarkArticleCookieRegex(b *testing.B) {
	const expr = `^(.*?;)?(email=[^;]*@some-company-name.com)(;.*)?$`
	re := regexp.MustCompile(expr)
	d := compileDFA(expr, re)
	in := "email=li@some-company-name.com; lang=zh"
	b.Run("regexp", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			re.MatchString(in)
		}
	})
	b.Run("automaton", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d.match(in)
		}
	})
}

// TestDFAConstructionIsBounded: expressions whose automaton would be large fall back to regexp
// quickly instead of stalling a snapshot build.
func TestDFAConstructionIsBounded(t *testing.T) {
	for _, expr := range []string{
		`(a|b)*a(a|b){12}`,                   // 2^13 states
		`[a-q][^u-z]{13}x`,                   // large too
		`(x+x+)+y{0,500}[\x{80}-\x{10FFFF}]`, // many instructions
	} {
		re := regexp.MustCompile(expr)
		start := time.Now()
		d := compileDFA(expr, re)
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("%q took %v", expr, elapsed)
		}
		if d != nil {
			for _, in := range []string{"", "ab", "aaaaaaaaaaaaaaaaab", "xxxxy"} {
				if d.match(in) != re.MatchString(in) {
					t.Errorf("%q on %q disagrees", expr, in)
				}
			}
		}
	}
}
