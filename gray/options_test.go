package gray_test

import (
	"strings"
	"testing"

	"github.com/graylane/graylane/gray"
)

func TestOptionsOverride(t *testing.T) {
	service := gray.Options{TagKey: "x-md-global-lane", StickyHeader: "userid", StickyCookie: "uid"}
	for _, tc := range []struct {
		name string
		with gray.Options
		want gray.Options
	}{
		{"nothing set keeps the service's", gray.Options{}, service},
		{"one field replaces only that field", gray.Options{StickyHeader: "x-user"},
			gray.Options{TagKey: "x-md-global-lane", StickyHeader: "x-user", StickyCookie: "uid"}},
		{"every field", gray.Options{TagKey: "t", StickyHeader: "h", StickyCookie: "c", Fallback: gray.FallbackNone},
			gray.Options{TagKey: "t", StickyHeader: "h", StickyCookie: "c", Fallback: gray.FallbackNone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := service.Override(tc.with); got != tc.want {
				t.Fatalf("Override(%+v) = %+v, want %+v", tc.with, got, tc.want)
			}
		})
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := (gray.Options{TagKey: "x-md-global-gray-lane", StickyHeader: "userid", StickyCookie: "uid"}).Validate(); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	for _, f := range gray.Fallbacks {
		if err := (gray.Options{Fallback: f}).Validate(); err != nil {
			t.Fatalf("fallback %s refused: %v", f, err)
		}
	}
	for _, tc := range []struct {
		opts  gray.Options
		field string
	}{
		{gray.Options{TagKey: "x lane"}, "tag_key"},
		{gray.Options{StickyHeader: "user:id"}, "sticky_header"},
		{gray.Options{StickyCookie: "uid;"}, "sticky_cookie"},
		{gray.Options{Fallback: "everywhere"}, "fallback"},
		{gray.Options{StickyHeader: "X-Md-Global-Gray-Lane"}, "sticky_header"},
		{gray.Options{TagKey: "x-md-global-lane", StickyHeader: "x-md-global-lane"}, "sticky_header"},
	} {
		err := tc.opts.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.opts, err, tc.field)
		}
	}
}
