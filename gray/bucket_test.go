package gray_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/graylane/graylane/gray"
)

// TestBucketSpreadsEvenly: sequential user keys, UUIDs and keys that differ only in their last
// character fill the 100 percentiles evenly (chi-square over 99 degrees of freedom; 99 is the
// expectation and 180 would happen by chance less than once in a million).
func TestBucketSpreadsEvenly(t *testing.T) {
	const n = 100_000
	for _, keys := range []struct {
		name string
		key  func(i int) string
	}{
		{"user-N", func(i int) string { return fmt.Sprint("user-", i) }},
		{"UUID", func(i int) string {
			x := uint64(i)*0x9e3779b97f4a7c15 + 1
			return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", x>>32, x>>16&0xffff, x>>4&0xfff, x&0xfff, x*31)
		}},
		{"last character", func(i int) string { return strings.Repeat("k", i%37) + string(rune(33+i%90)) + fmt.Sprint(i/3330) }},
	} {
		var cells [100]int
		for i := range n {
			cells[gray.Bucket("bservice", keys.key(i))/100]++
		}
		chi2, want := 0.0, float64(n)/100
		for _, c := range cells {
			chi2 += (float64(c) - want) * (float64(c) - want) / want
		}
		if chi2 > 180 {
			t.Errorf("%s keys: chi-square %.0f over 100 percentiles, want at most 180", keys.name, chi2)
		}
	}
}

// TestBucketEveryLength: keys of every length up to 70 bytes (each way the hash reads a key's
// tail, and several 16-byte rounds) give a bucket in range, and one byte changed anywhere moves it.
func TestBucketEveryLength(t *testing.T) {
	for n := 0; n <= 70; n++ {
		key := strings.Repeat("a", n)
		b := gray.Bucket("bservice", key)
		if b < 0 || b >= 10000 {
			t.Fatalf("length %d: bucket %d out of range", n, b)
		}
		moved := 0
		for i := 0; i < n; i++ {
			if gray.Bucket("bservice", key[:i]+"b"+key[i+1:]) != b {
				moved++
			}
		}
		if moved < n-1 { // a collision in 10000 buckets may happen once by chance
			t.Errorf("length %d: changing one byte moved the bucket for %d of %d positions", n, moved, n)
		}
	}
}
