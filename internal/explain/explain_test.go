package explain

import (
	"errors"
	"testing"
)

func TestParseHeaders(t *testing.T) {
	h, err := ParseHeaders([]string{"UserID: 123", "", "  x-a :  b: c  ", "\r"})
	if err != nil || len(h) != 2 || h["UserID"] != "123" || h["x-a"] != "b: c" {
		t.Fatalf("%v, %v", h, err)
	}
	for _, bad := range []string{"nocolon", ": value"} {
		var ie *InputError
		if _, err := ParseHeaders([]string{bad}); !errors.As(err, &ie) {
			t.Errorf("%q: %v, want an InputError", bad, err)
		}
	}
}
