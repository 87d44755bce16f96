package main

import (
	"strings"

	"github.com/spf13/pflag"
)

// longFlagSpellings returns args with the flag spellings of the standard flag package, which
// graylane used before cobra, rewritten for pflag, given fs, the flags of the command args run: a
// -name or -name=value whose name is a long flag in fs becomes --name (pflag would read -who as the
// shorthands -w -h -o, and -kv-prefix as -k with the value v-prefix), and a --x or --x=value whose x
// is only the shorthand of a flag becomes -x (the old --f FILE). A single-dash word that names no
// long flag is left to pflag as shorthands (-o json, -ojson, -H 'k: v'). Arguments after "--", and
// the value of a flag given as the next argument, are left as they are, whatever they look like.
// args is not modified.
func longFlagSpellings(fs *pflag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			out = append(out, a)
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		var f *pflag.Flag
		switch {
		case !strings.HasPrefix(a, "--") && len(name) > 1 && fs.Lookup(name) != nil:
			a = "-" + a
			f = fs.Lookup(name)
		case strings.HasPrefix(a, "--") && len(name) == 1 && fs.Lookup(name) == nil && fs.ShorthandLookup(name) != nil:
			a = a[1:]
			f = fs.ShorthandLookup(name)
		case strings.HasPrefix(a, "--"):
			f = fs.Lookup(name)
		default:
			// Shorthands: the first that takes a value takes the rest of the word, or the next
			// argument when the word ends there.
			for j := 1; j < len(a); j++ {
				f = fs.ShorthandLookup(a[j : j+1])
				if f == nil || f.NoOptDefVal == "" {
					hasValue = f == nil || j < len(a)-1
					break
				}
			}
		}
		out = append(out, a)
		if f != nil && f.NoOptDefVal == "" && !hasValue && i+1 < len(args) {
			i++
			out = append(out, args[i])
		}
	}
	return out
}
