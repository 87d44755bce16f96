package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// TestWalkthrough runs the demo and checks the stories it tells.
func TestWalkthrough(t *testing.T) {
	var buf bytes.Buffer
	out = &buf
	main()
	output := buf.String()

	for _, want := range []string{
		"matching request       -> lane canary  reason match",
		"user-259 (bucket 687)  -> lane canary  reason weight",
		"user-362 (bucket 1149) -> lane stable  reason base",
		"switched     production -> green  (weight)",
		"rolled back  production -> blue   (base)",
		`meta key "weight": "10%" is not a percentage`,
		"user-2, matching       -> lane stable",
		" 0 allocs/op",
	} {
		if !strings.Contains(output, want) {
			t.Errorf("output lacks %q:\n%s", want, output)
		}
	}
	weights := regexp.MustCompile(`(?m)^weight .*users on the canary, (\d+) left it$`).FindAllStringSubmatch(output, -1)
	if len(weights) != 5 {
		t.Fatalf("expected 5 weight steps:\n%s", output)
	}
	for _, m := range weights {
		if m[1] != "0" {
			t.Errorf("users left the canary while its weight rose: %s", m[0])
		}
	}
}
