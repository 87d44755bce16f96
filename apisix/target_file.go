package apisix

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"
)

// FileTarget writes a State into a standalone-mode apisix.yaml (APISIX with
// deployment.role_data_plane.config_provider: yaml), which APISIX reloads when the file changes.
// The file holds graylane's upstreams and the routes of Routes, with their traffic-split rules
// following the lanes, and ends with the "#END" line APISIX waits for. The file is replaced
// atomically and only when its content changes. graylane owns the whole file: keep other routes
// in another gateway or generate them into this one through Routes.
type FileTarget struct {
	Path   string
	Routes []RouteSpec
}

// Apply implements Target.
func (t *FileTarget) Apply(_ context.Context, st *State) (Changes, error) {
	doc := map[string]any{}
	var ups []any
	for _, u := range st.Upstreams {
		ups = append(ups, generic(u))
	}
	doc["upstreams"] = ups
	var routes []any
	for _, spec := range t.Routes {
		routes = append(routes, generic(BuildRoute(spec, st)))
	}
	doc["routes"] = routes
	var buf bytes.Buffer
	buf.WriteString("# Written by graylane apisix sync from Consul; edits are overwritten.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return Changes{}, err
	}
	enc.Close()
	buf.WriteString("#END\n")
	if old, err := os.ReadFile(t.Path); err == nil && bytes.Equal(old, buf.Bytes()) {
		return Changes{}, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(t.Path), ".apisix-*.yaml")
	if err != nil {
		return Changes{}, fmt.Errorf("apisix standalone: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(buf.Bytes()); err != nil {
		tmp.Close()
		return Changes{}, fmt.Errorf("apisix standalone: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return Changes{}, fmt.Errorf("apisix standalone: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return Changes{}, fmt.Errorf("apisix standalone: %w", err)
	}
	if err := os.Rename(tmp.Name(), t.Path); err != nil {
		return Changes{}, fmt.Errorf("apisix standalone: %w", err)
	}
	return Changes{Written: []string{t.Path}}, nil
}

// generic turns a value into plain maps and slices through JSON, so YAML uses the JSON names.
func generic(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps, slices, strings and numbers come here
	}
	var out any
	json.Unmarshal(b, &out)
	return out
}
