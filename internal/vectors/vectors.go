// Package vectors loads graylane's shared decision vectors (gray/testdata/vectors.yaml). The core
// runs them through gray.StaticRequest; each enforcer runs the same cases through its own request
// type and must reach the same decisions.
package vectors

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"

	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
)

// DefaultService is the service of a case that names none.
const DefaultService = "bservice"

// Case is one vector.
type Case struct {
	Name      string       `yaml:"name"`
	Service   string       `yaml:"service"`
	Options   gray.Options `yaml:"options"`
	Instances []Instance   `yaml:"instances"`
	Request   Request      `yaml:"request"`
	Want      Want         `yaml:"want"`
	// Problems holds one substring for each problem the snapshot must report.
	Problems []string `yaml:"problems"`
}

// Instance is an instance with its Consul meta.
type Instance struct {
	ID   string            `yaml:"id"`
	Meta map[string]string `yaml:"meta"`
}

// Request is the request of a case, in plain fields.
type Request struct {
	Headers map[string]string `yaml:"headers"` // lower-case names
	Path    string            `yaml:"path"`
	Query   string            `yaml:"query"` // raw, without '?'
	Method  string            `yaml:"method"`
	IP      string            `yaml:"ip"`
}

// Want is the expected decision.
type Want struct {
	Lane      string   `yaml:"lane"`
	Reason    string   `yaml:"reason"`
	Instances []string `yaml:"instances"` // IDs, in any order
	// Rule is the index of the matched rule; checked only when set.
	Rule *int `yaml:"rule"`
}

// Path returns the location of the vectors file.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "gray", "testdata", "vectors.yaml")
}

// Load reads and checks the vectors file.
func Load() ([]Case, error) {
	data, err := os.ReadFile(Path())
	if err != nil {
		return nil, err
	}
	var file struct {
		Cases []Case `yaml:"cases"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		return nil, fmt.Errorf("%s: %w", Path(), err)
	}
	seen := map[string]bool{}
	for i := range file.Cases {
		c := &file.Cases[i]
		if c.Name == "" || seen[c.Name] {
			return nil, fmt.Errorf("%s: case %d: missing or repeated name %q", Path(), i+1, c.Name)
		}
		seen[c.Name] = true
		if c.Service == "" {
			c.Service = DefaultService
		}
		if c.Request.IP != "" {
			if _, err := netip.ParseAddr(c.Request.IP); err != nil {
				return nil, fmt.Errorf("%s: case %q: %w", Path(), c.Name, err)
			}
		}
	}
	return file.Cases, nil
}

// GrayInstances returns the case's instances for gray.NewSnapshot, each carrying its ID as value.
func (c *Case) GrayInstances() []gray.Instance[string] {
	out := make([]gray.Instance[string], len(c.Instances))
	for i, inst := range c.Instances {
		out[i] = gray.Instance[string]{ID: inst.ID, Meta: inst.Meta, Value: inst.ID}
	}
	return out
}

// StaticRequest returns the case's request as a gray.StaticRequest.
func (r *Request) StaticRequest() *gray.StaticRequest {
	sr := &gray.StaticRequest{Headers: r.Headers, URLPath: r.Path, URLQuery: r.Query, HTTPMethod: r.Method}
	if r.IP != "" {
		sr.Client = netip.MustParseAddr(r.IP)
	}
	return sr
}

// Check compares a decision, given as lane, reason, rule index and instance IDs, with the case's
// expectation and returns a description of every difference.
func (c *Case) Check(lane string, reason gray.Reason, rule int, ids []string) []string {
	var diffs []string
	if lane != c.Want.Lane {
		diffs = append(diffs, fmt.Sprintf("lane %q, want %q", lane, c.Want.Lane))
	}
	if reason.String() != c.Want.Reason {
		diffs = append(diffs, fmt.Sprintf("reason %s, want %s", reason, c.Want.Reason))
	}
	if c.Want.Rule != nil && rule != *c.Want.Rule {
		diffs = append(diffs, fmt.Sprintf("rule %d, want %d", rule, *c.Want.Rule))
	}
	got, want := slices.Sorted(slices.Values(ids)), slices.Sorted(slices.Values(c.Want.Instances))
	if !slices.Equal(got, want) {
		diffs = append(diffs, fmt.Sprintf("instances %v, want %v", got, want))
	}
	return diffs
}
