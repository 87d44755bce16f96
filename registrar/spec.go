package registrar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/internal/consulclient"
)

// Spec is one instance to register: its service, address, health check and meta. In a spec file
// the meta block mixes graylane's keys, written in the source article's YAML form, with any other
// meta keys:
//
//	name: bservice
//	id: bservice-canary-1
//	address: 10.0.0.7
//	port: 8000
//	tags: [v2]
//	endpoints: ["grpc://10.0.0.7:9000", "http://10.0.0.7:8000"]
//	check: {http: "http://10.0.0.7:8000/healthz", interval: 10s, timeout: 2s, deregister_after: 10m}
//	meta:
//	  canary: true
//	  weight: 5
//	  match:
//	    - header:
//	        - key: canary
//	          value_match: "true"
//	  version: v2
//
// A file holds one such mapping, a list of them, or several YAML documents.
type Spec struct {
	Name    string
	ID      string
	Address string
	Port    int
	Tags    []string
	// Endpoints are the URLs (scheme://host:port) a Kratos client finds the instance by, written as
	// Consul tagged addresses keyed by scheme, as the Kratos consul registry writes them (a Kratos
	// gRPC client needs a grpc:// one; without any, Kratos sees http://address:port only).
	Endpoints []string
	Check     *CheckSpec
	// Gray is the gray part of the meta.
	Gray gray.Meta
	// Meta holds the other meta keys.
	Meta map[string]string

	// File and Line say where the spec was read, for error messages.
	File string
	Line int
}

// CheckSpec is an instance's health check: exactly one of HTTP, GRPC, TCP and TTL.
type CheckSpec struct {
	HTTP string `yaml:"http"`
	GRPC string `yaml:"grpc"` // host:port, optionally /service
	TCP  string `yaml:"tcp"`  // host:port
	TTL  string `yaml:"ttl"`  // the process reports its health within this duration
	// Interval between checks (HTTP, gRPC, TCP). Default 10s.
	Interval string `yaml:"interval"`
	// Timeout of one check. Default 5s.
	Timeout string `yaml:"timeout"`
	// DeregisterAfter removes the instance after it has been critical this long (at least 1m).
	DeregisterAfter string `yaml:"deregister_after"`
}

// SpecError reports a spec that cannot be registered: the file, the YAML line, the instance and the
// field at fault.
type SpecError struct {
	File     string
	Line     int
	Instance string // the instance ID, or "#n" for the n-th instance without one
	Field    string
	Err      error
}

func (e *SpecError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Instance != "" {
		fmt.Fprintf(&b, "instance %s: ", e.Instance)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, "%s: ", e.Field)
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *SpecError) Unwrap() error { return e.Err }

// rawSpec is the YAML shape of a Spec.
type rawSpec struct {
	Name      string     `yaml:"name"`
	ID        string     `yaml:"id"`
	Address   string     `yaml:"address"`
	Port      int        `yaml:"port"`
	Tags      []string   `yaml:"tags"`
	Endpoints []string   `yaml:"endpoints"`
	Check     *CheckSpec `yaml:"check"`
	Meta      yaml.Node  `yaml:"meta"`
}

// LoadSpecs reads and validates a spec file. Every instance is checked before any is returned: one bad
// instance fails the whole file, so nothing of it gets registered.
func LoadSpecs(path string) ([]Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseSpecs(path, data)
}

// ParseSpecs reads and validates specs from YAML; file names the source in errors.
func ParseSpecs(file string, data []byte) ([]Spec, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var specs []Spec
	var errs []error
	for doc := 0; ; doc++ {
		var root yaml.Node
		if err := dec.Decode(&root); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, &SpecError{File: file, Err: err}
		}
		if len(root.Content) == 0 || root.Content[0].Kind == yaml.ScalarNode && root.Content[0].Tag == "!!null" {
			continue // an empty document, as a trailing --- makes
		}
		items := []*yaml.Node{&root}
		if body := root.Content[0]; body.Kind == yaml.SequenceNode {
			items = body.Content
		}
		for _, item := range items {
			s, err := parseSpec(file, item, len(specs)+1)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			specs = append(specs, s)
		}
	}
	if len(specs) == 0 && len(errs) == 0 {
		return nil, &SpecError{File: file, Err: errors.New("no instances")}
	}
	seen := map[string]int{}
	for _, s := range specs {
		if line, dup := seen[s.ID]; dup {
			errs = append(errs, &SpecError{File: file, Line: s.Line, Instance: s.ID, Field: "id",
				Err: fmt.Errorf("repeats the instance at line %d", line)})
		}
		seen[s.ID] = s.Line
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return specs, nil
}

func parseSpec(file string, node *yaml.Node, n int) (Spec, error) {
	body := node
	if body.Kind == yaml.DocumentNode {
		body = body.Content[0]
	}
	fail := func(line int, id, field string, err error) (Spec, error) {
		if id == "" {
			id = fmt.Sprintf("#%d", n)
		}
		return Spec{}, &SpecError{File: file, Line: line, Instance: id, Field: field, Err: err}
	}
	if body.Kind != yaml.MappingNode {
		return fail(body.Line, "", "", errors.New("expected a mapping with name, id, address, port, tags, endpoints, check and meta"))
	}
	// Strict fields: a misspelt field is an error, not a silent default.
	if err := knownFields(body, "", specFields); err != nil {
		return fail(err.line, idOf(body), err.field, err)
	}
	var raw rawSpec
	if err := body.Decode(&raw); err != nil {
		return fail(body.Line, idOf(body), "", errors.New(strings.TrimPrefix(err.Error(), "yaml: ")))
	}
	s := Spec{Name: raw.Name, ID: raw.ID, Address: raw.Address, Port: raw.Port, Tags: raw.Tags, Endpoints: raw.Endpoints,
		Check: raw.Check, File: file, Line: body.Line, Meta: map[string]string{}}
	if s.ID == "" {
		s.ID = s.Name
	}
	lineOf := func(key string) int { return fieldLine(body, key) }
	switch {
	case s.Name == "":
		return fail(body.Line, s.ID, "name", errors.New("missing"))
	case CheckName(s.Name) != nil:
		return fail(lineOf("name"), s.ID, "name", CheckName(s.Name))
	case CheckName(s.ID) != nil:
		return fail(lineOf("id"), s.ID, "id", CheckName(s.ID))
	case s.Port < 0 || s.Port > 65535:
		return fail(lineOf("port"), s.ID, "port", fmt.Errorf("%d is not a port", s.Port))
	}
	if _, err := taggedAddresses(s.Endpoints); err != nil {
		return fail(lineOf("endpoints"), s.ID, "endpoints", err)
	}
	if s.Check != nil {
		if err := s.Check.validate(); err != nil {
			return fail(lineOf("check"), s.ID, "check", err)
		}
	}
	// Split the meta block: graylane's keys go to the gray codec, the rest are plain strings.
	metaNode := &raw.Meta
	if metaNode.Kind == yaml.DocumentNode && len(metaNode.Content) == 1 {
		metaNode = metaNode.Content[0]
	}
	if metaNode.Kind != 0 && !(metaNode.Kind == yaml.ScalarNode && metaNode.Tag == "!!null") {
		if metaNode.Kind != yaml.MappingNode {
			return fail(lineOf("meta"), s.ID, "meta", errors.New("expected a mapping"))
		}
		grayNode := &yaml.Node{Kind: yaml.MappingNode, Line: metaNode.Line}
		for i := 0; i+1 < len(metaNode.Content); i += 2 {
			k, v := metaNode.Content[i], metaNode.Content[i+1]
			if gray.IsMetaKey(k.Value) {
				grayNode.Content = append(grayNode.Content, k, v)
				continue
			}
			if v.Kind != yaml.ScalarNode {
				return fail(k.Line, s.ID, "meta."+k.Value, errors.New("expected a single value"))
			}
			if near := nearGrayKey(k.Value); near != "" {
				return fail(k.Line, s.ID, "meta."+k.Value, fmt.Errorf("looks like graylane's %q misspelt; graylane would ignore it (rename the key if it is meant for something else)", near))
			}
			if _, dup := s.Meta[k.Value]; dup {
				return fail(k.Line, s.ID, "meta."+k.Value, errors.New("repeated; a mapping holds each key once"))
			}
			s.Meta[k.Value] = v.Value
		}
		if err := grayNode.Decode(&s.Gray); err != nil {
			var me *gray.MetaError
			line := lineOf("meta")
			if errors.As(err, &me) && me.Line > 0 {
				line, me.Line = me.Line, 0 // the line goes in front, with the file
			}
			return fail(line, s.ID, "meta", err)
		}
	}
	if _, err := s.Registration(); err != nil {
		return fail(lineOf("meta"), s.ID, "meta", err)
	}
	return s, nil
}

var (
	specFields  = []string{"name", "id", "address", "port", "tags", "endpoints", "check", "meta"}
	checkFields = []string{"http", "grpc", "tcp", "ttl", "interval", "timeout", "deregister_after"}
)

type fieldError struct {
	line  int
	field string
	err   error
}

func (e *fieldError) Error() string { return e.err.Error() }

// knownFields reports the first key of a mapping that is not among known (and, for the check block,
// among the check's fields).
func knownFields(n *yaml.Node, prefix string, known []string) *fieldError {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !slices.Contains(known, k.Value) {
			return &fieldError{line: k.Line, field: prefix + k.Value, err: fmt.Errorf("unknown field; expected one of %s", strings.Join(known, ", "))}
		}
		if k.Value == "check" && n.Content[i+1].Kind == yaml.MappingNode {
			if err := knownFields(n.Content[i+1], "check.", checkFields); err != nil {
				return err
			}
		}
	}
	return nil
}

// nearGrayKey returns the graylane key that key is one edit (or one swap of neighbours) away from.
func nearGrayKey(key string) string {
	for _, g := range []string{gray.KeyCanary, gray.KeyBlueGreen, gray.KeyWeight} {
		if key != g && editDistance(strings.ToLower(key), g) <= 1 {
			return g
		}
	}
	return ""
}

// editDistance is the optimal string alignment distance: insertions, deletions, substitutions and
// swaps of neighbouring characters.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// fieldLine returns the line of a top-level key of a mapping node, or the node's line.
func fieldLine(n *yaml.Node, key string) int {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i].Line
		}
	}
	return n.Line
}

func idOf(n *yaml.Node) string {
	for _, key := range []string{"id", "name"} {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1].Value
			}
		}
	}
	return ""
}

// MaxNameLength is the longest service name or instance ID graylane registers.
const MaxNameLength = 256

// CheckName reports what is wrong with a service name or instance ID, or nil: it must have 1 to
// MaxNameLength characters, each a letter, a digit, '-', '_' or '.'.
func CheckName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxNameLength:
		return fmt.Errorf("%q...: %d characters, at most %d", s[:20], len(s), MaxNameLength)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%q: use letters, digits, '-', '_' and '.'", s)
		}
	}
	return nil
}

func (c *CheckSpec) validate() error {
	kinds := 0
	for _, v := range []string{c.HTTP, c.GRPC, c.TCP, c.TTL} {
		if v != "" {
			kinds++
		}
	}
	if kinds != 1 {
		return errors.New("set exactly one of http, grpc, tcp and ttl")
	}
	for name, v := range map[string]string{"ttl": c.TTL, "interval": c.Interval, "timeout": c.Timeout, "deregister_after": c.DeregisterAfter} {
		if v == "" {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("%s: %q is not a positive duration such as 10s", name, v)
		}
		if name == "deregister_after" && d < time.Minute {
			return fmt.Errorf("deregister_after: Consul allows no less than 1m, got %s", v)
		}
	}
	if c.TTL != "" && (c.Interval != "" || c.Timeout != "") {
		return errors.New("a ttl check takes no interval or timeout")
	}
	return nil
}

// Registration returns the Consul agent registration for the spec, with the gray meta merged into the
// other meta keys. It fails when the meta breaks Consul's limits.
func (s *Spec) Registration() (*api.AgentServiceRegistration, error) {
	meta, err := s.Gray.Merge(s.Meta)
	if err != nil {
		return nil, err
	}
	if err := gray.CheckConsulLimits(meta); err != nil {
		return nil, err
	}
	tagged, err := taggedAddresses(s.Endpoints)
	if err != nil {
		return nil, err
	}
	reg := &api.AgentServiceRegistration{
		ID: s.ID, Name: s.Name, Address: s.Address, Port: s.Port, Tags: s.Tags, Meta: meta,
		TaggedAddresses: tagged,
	}
	if c := s.Check; c != nil {
		check := &api.AgentServiceCheck{
			CheckID:                        "graylane:" + s.ID,
			HTTP:                           c.HTTP,
			GRPC:                           c.GRPC,
			TCP:                            c.TCP,
			TTL:                            c.TTL,
			Interval:                       c.Interval,
			Timeout:                        c.Timeout,
			DeregisterCriticalServiceAfter: c.DeregisterAfter,
		}
		if c.TTL == "" && c.Interval == "" {
			check.Interval = "10s"
		}
		if c.TTL == "" && c.Timeout == "" {
			check.Timeout = "5s"
		}
		reg.Check = check
	}
	return reg, nil
}

// taggedAddresses maps endpoint URLs to Consul tagged addresses keyed by scheme, the form the Kratos
// consul registry writes and reads. nil for none.
func taggedAddresses(endpoints []string) (map[string]api.ServiceAddress, error) {
	if len(endpoints) == 0 {
		return nil, nil
	}
	out := make(map[string]api.ServiceAddress, len(endpoints))
	for _, e := range endpoints {
		u, err := url.Parse(e)
		if err != nil || u.Scheme == "" || u.Hostname() == "" || u.Port() == "" {
			return nil, fmt.Errorf("%q: want scheme://host:port", e)
		}
		port, err := strconv.Atoi(u.Port())
		if err != nil || port <= 0 || port > 65535 {
			return nil, fmt.Errorf("%q: %s is not a port", e, u.Port())
		}
		if consulclient.ConsulsOwnAddress(u.Scheme) {
			return nil, fmt.Errorf("%q: %s is Consul's own tagged address", e, u.Scheme)
		}
		if _, dup := out[u.Scheme]; dup {
			return nil, fmt.Errorf("%q: a second %s endpoint (one per scheme)", e, u.Scheme)
		}
		out[u.Scheme] = api.ServiceAddress{Address: e, Port: port}
	}
	return out, nil
}

// KratosMetadata returns the Metadata a Kratos app registers with the Kratos consul registry for this
// spec's gray meta and other keys (the registry writes Metadata to Consul meta verbatim). Use
// Registrar.DesiredMeta first to apply changes recorded with graylane.
func KratosMetadata(g gray.Meta, other map[string]string) (map[string]string, error) {
	meta, err := g.Merge(other)
	if err != nil {
		return nil, err
	}
	return meta, gray.CheckConsulLimits(meta)
}
