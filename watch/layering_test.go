package watch_test

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/graylane/graylane/"

// dataPlanes are the packages that decide where traffic goes: they read Consul through this package
// and must not carry code that writes it.
var dataPlanes = []string{"watch", "selector", "apisix", "apisix/extplugin", "apisix-plugin"}

// controlPlane are the packages that change what is registered and recorded in Consul.
var controlPlane = []string{"registrar", "rollout", "portal"}

// TestDataPlanesImportNoControlPlane: no data plane depends, even indirectly, on a control-plane
// package. The control plane may import this package; the reverse would put the code that writes
// Consul (and its dependencies) into every gateway and client. A failure names the import chain.
func TestDataPlanesImportNoControlPlane(t *testing.T) {
	args := []string{"list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}"}
	for _, p := range dataPlanes {
		args = append(args, module+p)
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			t.Fatalf("go list: %v\n%s", err, exit.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	imports := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		imports[f[0]] = f[1:]
	}
	for _, p := range dataPlanes {
		root := module + p
		if _, ok := imports[root]; !ok {
			t.Fatalf("go list did not list %s", root)
		}
		// Breadth first from the data plane, keeping how each package was reached.
		via := map[string]string{root: ""}
		queue := []string{root}
		for len(queue) > 0 {
			pkg := queue[0]
			queue = queue[1:]
			if slices.Contains(controlPlane, strings.TrimPrefix(pkg, module)) {
				chain := []string{pkg}
				for at := via[pkg]; at != ""; at = via[at] {
					chain = append(chain, at)
				}
				slices.Reverse(chain)
				t.Errorf("the data plane %s depends on the control plane: %s", p, strings.Join(chain, " -> "))
				continue
			}
			for _, next := range imports[pkg] {
				if _, seen := via[next]; !seen {
					via[next] = pkg
					queue = append(queue, next)
				}
			}
		}
	}
}
