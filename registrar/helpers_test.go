package registrar_test

import (
	"context"
	"testing"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/internal/registrartest"
	"github.com/graylane/graylane/registrar"
)

// Helpers shared with the watch package's tests: see internal/registrartest.
var (
	newRegistrar = registrartest.New
	aclAdmin     = registrartest.ACLAdmin
	aclToken     = registrartest.ACLToken
	applyFile    = registrartest.ApplyFile
	do           = registrartest.Do
	registerRaw  = registrartest.RegisterRaw
)

// grayOf returns the decoded gray meta of every instance of a service, from the catalog.
func grayOf(t *testing.T, r *registrar.Registrar, service string) map[string]gray.Meta {
	t.Helper()
	instances, _, err := r.Instances(context.Background(), service)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]gray.Meta{}
	for _, inst := range instances {
		if inst.GrayErr != nil {
			t.Fatalf("%s: %v", inst.ID, inst.GrayErr)
		}
		out[inst.ID] = inst.Gray
	}
	return out
}

// waitFor polls cond until it holds or the timeout passes.
var waitFor = eventually.Wait
