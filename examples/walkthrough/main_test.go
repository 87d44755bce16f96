package main

import (
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestWalkthrough runs the demo and checks the stories it tells.
func TestWalkthrough(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	main()
	os.Stdout = stdout
	w.Close()
	out := <-done

	for _, want := range []string{
		"matching request       -> lane canary  reason match",
		"user-29 (bucket 846)   -> lane canary  reason weight",
		"user-2 (bucket 1144)   -> lane stable  reason base",
		"switched     production -> green  (weight)",
		"rolled back  production -> blue   (base)",
		`meta key "weight": "10%" is not a percentage`,
		"user-2, matching       -> lane stable",
		" 0 allocs/op",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	weights := regexp.MustCompile(`(?m)^weight .*users on the canary, (\d+) left it$`).FindAllStringSubmatch(out, -1)
	if len(weights) != 5 {
		t.Fatalf("expected 5 weight steps:\n%s", out)
	}
	for _, m := range weights {
		if m[1] != "0" {
			t.Errorf("users left the canary while its weight rose: %s", m[0])
		}
	}
}
