package registrar_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consultest"
	kvrecord "github.com/graylane/graylane/internal/record"
	"github.com/graylane/graylane/registrar"
)

// TestSetServiceOptionsWritesTheOptionsKey: a service's first state comes with its options key (the
// defaults, "{}"), so that a watcher finds every recorded service's options in the folder; a change
// of a service's options writes them, in the same transaction as its state, to that key; options set
// back to the defaults write "{}"; a change that is not of the options leaves the key alone.
func TestSetServiceOptionsWritesTheOptionsKey(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	ctx := context.Background()
	kv := r.Client().KV()
	key := kvrecord.OptionsKey(r.KVPrefix(), "bservice")
	if first, _, err := kv.Get(key, nil); err != nil || first == nil || string(first.Value) != "{}" {
		t.Fatalf("options key %s after the service's first state: %v, %v", key, first, err)
	}

	if _, err := r.SetServiceOptions(ctx, "bservice", gray.Options{StickyHeader: "x-user-id", Fallback: gray.FallbackNone}); err != nil {
		t.Fatal(err)
	}
	pair, _, err := kv.Get(key, nil)
	if err != nil || pair == nil {
		t.Fatalf("options key %s after SetServiceOptions: %v, %v", key, pair, err)
	}
	var o gray.Options
	if err := json.Unmarshal(pair.Value, &o); err != nil || o != (gray.Options{StickyHeader: "x-user-id", Fallback: gray.FallbackNone}) {
		t.Fatalf("options key holds %s (%v)", pair.Value, err)
	}
	state, _, err := kv.Get(kvrecord.StateKey(r.KVPrefix(), "bservice"), nil)
	if err != nil || state == nil || state.ModifyIndex != pair.ModifyIndex {
		t.Fatalf("the state (index %v) and the options key (index %d) were not written in one transaction (%v)", state, pair.ModifyIndex, err)
	}

	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
	if again, _, err := kv.Get(key, nil); err != nil || again == nil || again.ModifyIndex != pair.ModifyIndex {
		t.Fatalf("a weight change rewrote the options key: %v, %v", again, err)
	}

	if _, err := r.SetServiceOptions(ctx, "bservice", gray.Options{}); err != nil {
		t.Fatal(err)
	}
	if pair, _, err := kv.Get(key, nil); err != nil || pair == nil || string(pair.Value) != "{}" {
		t.Fatalf("options key after options set back to the defaults: %v, %v", pair, err)
	}
}

// TestFirstChangeKeysAStateRecordedBeforeTheOptionsFolder: a state recorded before the options
// folder existed (options in the state only, no key) gets its key with its next change, whatever
// the change, and keeps its options; the change after that leaves the key alone.
func TestFirstChangeKeysAStateRecordedBeforeTheOptionsFolder(t *testing.T) {
	a := consultest.Start(t)
	r := newRegistrar(t, a, "alice")
	applyFile(t, r, "testdata/bservice.yaml")
	kv := r.Client().KV()
	key := kvrecord.OptionsKey(r.KVPrefix(), "bservice")
	stateKey := kvrecord.StateKey(r.KVPrefix(), "bservice")

	// Make the record look as an older graylane left it.
	pair, _, err := kv.Get(stateKey, nil)
	if err != nil || pair == nil {
		t.Fatalf("state: %v, %v", pair, err)
	}
	var st kvrecord.State
	if err := json.Unmarshal(pair.Value, &st); err != nil {
		t.Fatal(err)
	}
	st.OptionsKeyed, st.Options = false, &gray.Options{StickyHeader: "x-old"}
	pair.Value, _ = json.Marshal(st)
	if strings.Contains(string(pair.Value), "options_keyed") {
		t.Fatalf("a legacy state still says it is keyed: %s", pair.Value)
	}
	if _, err := kv.Put(pair, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Delete(key, nil); err != nil {
		t.Fatal(err)
	}

	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500})
	keyed, _, err := kv.Get(key, nil)
	if err != nil || keyed == nil {
		t.Fatalf("options key after the first change to a legacy state: %v, %v", keyed, err)
	}
	var o gray.Options
	if err := json.Unmarshal(keyed.Value, &o); err != nil || o.StickyHeader != "x-old" {
		t.Fatalf("options key holds %s (%v), want the state's options", keyed.Value, err)
	}
	do(t, r, "bservice", registrar.SetWeight{Lane: "canary", Weight: 5000})
	if again, _, err := kv.Get(key, nil); err != nil || again == nil || again.ModifyIndex != keyed.ModifyIndex {
		t.Fatalf("a second weight change rewrote the options key: %v, %v", again, err)
	}
}

// TestSetServiceOptionsNeedsTheOptionsKey: a token that may write the service's state but not its
// options key is refused before anything is recorded, with an error that names the key.
func TestSetServiceOptionsNeedsTheOptionsKey(t *testing.T) {
	a := consultest.StartACL(t)
	admin := aclAdmin(t, a)
	applyFile(t, admin, "testdata/bservice.yaml")
	cfg := registrar.NewConfig(a.HTTPAddr)
	cfg.Token = aclToken(t, admin, `key_prefix "" { policy = "read" }
		service_prefix "" { policy = "write" }
		node_prefix "" { policy = "read" }
		key_prefix "graylane/services/" { policy = "write" }`).SecretID
	r, err := registrar.New(cfg, registrar.WithOperator("mallory"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.SetServiceOptions(context.Background(), "bservice", gray.Options{StickyHeader: "x-user-id"})
	if !errors.Is(err, registrar.ErrPermission) || !strings.Contains(err.Error(), "key write on graylane/options/bservice") {
		t.Fatalf("got %v, want a PermissionError naming the options key", err)
	}
	if o, err := admin.ServiceOptions(context.Background(), "bservice"); err != nil || o != (gray.Options{}) {
		t.Fatalf("options after the refused change: %+v, %v", o, err)
	}
	// The same token may still make the changes that do not touch the options.
	if _, err := r.Do(context.Background(), "bservice", registrar.SetWeight{Lane: "canary", Weight: 2500}); err != nil {
		t.Fatal(err)
	}
}
