package watch_test

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/eventually"
	"github.com/graylane/graylane/internal/registrartest"
)

// bserviceYAML is the registrar's test spec: two stable instances of bservice and the source
// article's canary.
const bserviceYAML = "../registrar/testdata/bservice.yaml"

// The control plane that writes what the watcher reads: see internal/registrartest.
var (
	newRegistrar = registrartest.New
	aclAdmin     = registrartest.ACLAdmin
	aclToken     = registrartest.ACLToken
	applyFile    = registrartest.ApplyFile
	do           = registrartest.Do
	registerRaw  = registrartest.RegisterRaw
)

// waitFor polls cond until it holds or the timeout passes.
var waitFor = eventually.Wait

// checkNoLeak fails if goroutines of the watch package are still running shortly after Close.
func checkNoLeak(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "graylane/watch.(*") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch goroutines outlived Close:\n%s", stacks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
