package selector_test

import (
	"context"
	"testing"
	"time"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/selector"
	"github.com/graylane/graylane/watch"
)

var _ selector.OptionsSource = (*watch.OptionsView)(nil)

// TestServiceOptionsFromConsul: the sticky header is the service's, kept in Consul with the
// registrar; a change of it reaches a running client; a client option overrides it.
func TestServiceOptionsFromConsul(t *testing.T) {
	e := newEnv(t)
	e.start("bservice", "s1", gray.Meta{}, nil)
	e.start("bservice", "c1", gray.Meta{Canary: true, Weight: 1000}, nil)
	ctx := context.Background()
	if _, err := e.r.SetServiceOptions(ctx, "bservice", gray.Options{StickyHeader: "x-user-id"}); err != nil {
		t.Fatal(err)
	}
	w, err := watch.New(watch.NewConfig(e.agent.HTTPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	view := w.Options("bservice")
	<-view.Ready()

	inside, outside := userIn("bservice", 0, 1000), userIn("bservice", 1000, 10000)
	fromConsul := e.dial("bservice", selector.WithServiceOptions(view))
	overridden := e.dial("bservice", selector.WithServiceOptions(view), selector.WithStickyHeader("x-account"))
	sticky := func(t *testing.T, who func() (string, error), want string) {
		t.Helper()
		got := count(t, 100, func(int) (string, error) { return who() })
		if got[want] != 100 {
			t.Fatalf("%v, want every call on %s", got, want)
		}
	}
	waitFor(t, 10*time.Second, "the canary", func() bool { s, err := who(ctx, fromConsul, "x-user-id", inside); return err == nil && s == "c1" })
	sticky(t, func() (string, error) { return who(ctx, fromConsul, "x-user-id", inside) }, "c1")
	sticky(t, func() (string, error) { return who(ctx, fromConsul, "x-user-id", outside) }, "s1")
	sticky(t, func() (string, error) { return who(ctx, overridden, "x-user-id", outside, "x-account", inside) }, "c1")
	sticky(t, func() (string, error) { return who(ctx, overridden, "x-user-id", inside, "x-account", outside) }, "s1")

	// The service now keeps users apart by x-account: the running client follows.
	if _, err := e.r.SetServiceOptions(ctx, "bservice", gray.Options{StickyHeader: "x-account"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the new sticky header", func() bool {
		s, err := who(ctx, fromConsul, "x-account", inside, "x-user-id", outside)
		return err == nil && s == "c1"
	})
	sticky(t, func() (string, error) { return who(ctx, fromConsul, "x-account", inside, "x-user-id", outside) }, "c1")
	sticky(t, func() (string, error) { return who(ctx, fromConsul, "x-account", outside, "x-user-id", inside) }, "s1")
}
