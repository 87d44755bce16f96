package explain

import (
	"errors"
	"testing"
)

func TestParseHeaders(t *testing.T) {
	h, err := ParseHeaders([]string{"UserID: 123", "", "  x-a :  b: c  ", "\r", "x-env=green", "cookie: lang=zh; a=b", "x-url=http://a"})
	if err != nil || len(h) != 5 || h["UserID"] != "123" || h["x-a"] != "b: c" || h["x-env"] != "green" ||
		h["cookie"] != "lang=zh; a=b" || h["x-url"] != "http://a" {
		t.Fatalf("%v, %v", h, err)
	}
	for _, bad := range []string{"nocolon", ": value", "=value"} {
		var ie *InputError
		if _, err := ParseHeaders([]string{bad}); !errors.As(err, &ie) {
			t.Errorf("%q: %v, want an InputError", bad, err)
		}
	}
}
