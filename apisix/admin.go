package apisix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Admin is a client of APISIX's Admin API (/apisix/admin, header X-API-KEY). It is safe for
// concurrent use.
type Admin struct {
	base   string
	key    string
	client *http.Client
}

// NewAdmin returns a client for the Admin API at addr ("http://127.0.0.1:9180" or "127.0.0.1:9180")
// with the admin key.
func NewAdmin(addr, key string) (*Admin, error) {
	if addr == "" {
		return nil, errors.New("apisix admin: no address (flag --admin or APISIX_ADMIN_ADDR)")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("apisix admin: address %q: want http://host:port", addr)
	}
	return &Admin{base: strings.TrimRight(addr, "/") + "/apisix/admin", key: key,
		client: &http.Client{Timeout: 10 * time.Second}}, nil
}

// AdminError is an answer of the Admin API other than success.
type AdminError struct {
	Method, Path string
	Status       int
	Message      string // error_msg, or the body
}

func (e *AdminError) Error() string {
	msg := fmt.Sprintf("apisix admin: %s %s: %d %s", e.Method, e.Path, e.Status, e.Message)
	if e.Refused() {
		msg += " (the Admin API refused the key: give the right one with --admin-key or APISIX_ADMIN_KEY)"
	}
	return msg
}

// Refused reports whether the Admin API refused the key (401 or 403): retrying cannot help.
func (e *AdminError) Refused() bool {
	return e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden
}

// keyRefused reports whether err is, or wraps, an Admin API answer that refused the key.
func keyRefused(err error) bool {
	var ae *AdminError
	return errors.As(err, &ae) && ae.Refused()
}

// Temporary reports whether retrying may succeed: a 5xx or a 429.
func (e *AdminError) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests
}

// ErrNotFound is wrapped by errors for objects that do not exist.
var ErrNotFound = errors.New("apisix admin: not found")

func (a *Admin) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-KEY", a.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("apisix admin: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("apisix admin: %s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			ErrorMsg string `json:"error_msg"`
			Message  string `json:"message"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && (e.ErrorMsg != "" || e.Message != "") {
			msg = e.ErrorMsg + e.Message
		}
		ae := &AdminError{Method: method, Path: path, Status: resp.StatusCode, Message: msg}
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %w", ErrNotFound, ae)
		}
		return ae
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("apisix admin: %s %s: %w", method, path, err)
		}
	}
	return nil
}

// listEntry is one item of an Admin API list answer.
type listEntry struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// list returns the values of a collection. APISIX answers an empty collection with "list": {} in
// some versions and [] in others.
func (a *Admin) list(ctx context.Context, kind string) ([]json.RawMessage, error) {
	var page struct {
		List json.RawMessage `json:"list"`
	}
	if err := a.do(ctx, http.MethodGet, "/"+kind, nil, &page); err != nil {
		return nil, err
	}
	var entries []listEntry
	if t := bytes.TrimSpace(page.List); len(t) > 0 && t[0] == '[' {
		if err := json.Unmarshal(t, &entries); err != nil {
			return nil, fmt.Errorf("apisix admin: list %s: %w", kind, err)
		}
	}
	out := make([]json.RawMessage, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Value)
	}
	return out, nil
}

// Upstreams lists every upstream.
func (a *Admin) Upstreams(ctx context.Context) ([]Upstream, error) {
	raw, err := a.list(ctx, "upstreams")
	if err != nil {
		return nil, err
	}
	out := make([]Upstream, 0, len(raw))
	for _, r := range raw {
		u, err := decodeUpstream(r)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// decodeUpstream reads an upstream as APISIX stores it; nodes may be in hash or array form.
func decodeUpstream(raw json.RawMessage) (Upstream, error) {
	var u struct {
		Upstream
		Nodes json.RawMessage `json:"nodes"`
		ID    json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(raw, &u); err != nil {
		return Upstream{}, fmt.Errorf("apisix admin: upstream: %w", err)
	}
	out := u.Upstream
	out.ID = strings.Trim(string(u.ID), `"`)
	out.Nodes = map[string]int{}
	var hash map[string]int
	var list []struct {
		Host   string `json:"host"`
		Port   int    `json:"port"`
		Weight int    `json:"weight"`
	}
	switch {
	case json.Unmarshal(u.Nodes, &hash) == nil:
		out.Nodes = hash
	case json.Unmarshal(u.Nodes, &list) == nil:
		for _, n := range list {
			out.Nodes[fmt.Sprintf("%s:%d", n.Host, n.Port)] = n.Weight
		}
	}
	if out.Nodes == nil {
		out.Nodes = map[string]int{}
	}
	return out, nil
}

// PutUpstream creates or replaces an upstream, whole (a PATCH would merge hash-form nodes and keep
// the old ones).
func (a *Admin) PutUpstream(ctx context.Context, u *Upstream) error {
	return a.do(ctx, http.MethodPut, "/upstreams/"+url.PathEscape(u.ID), u, nil)
}

// DeleteUpstream deletes an upstream. APISIX refuses (400) while a route uses it.
func (a *Admin) DeleteUpstream(ctx context.Context, id string) error {
	return a.do(ctx, http.MethodDelete, "/upstreams/"+url.PathEscape(id), nil, nil)
}

// Routes lists every route as a JSON object.
func (a *Admin) Routes(ctx context.Context) ([]map[string]any, error) {
	raw, err := a.list(ctx, "routes")
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(raw))
	for _, r := range raw {
		var m map[string]any
		if err := json.Unmarshal(r, &m); err != nil {
			return nil, fmt.Errorf("apisix admin: route: %w", err)
		}
		out = append(out, m)
	}
	return out, nil
}

// PutRoute creates or replaces a route. Fields APISIX sets itself (create_time, update_time) are
// left out.
func (a *Admin) PutRoute(ctx context.Context, route map[string]any) error {
	id := fmt.Sprint(route["id"])
	body := make(map[string]any, len(route))
	for k, v := range route {
		if k != "create_time" && k != "update_time" {
			body[k] = v
		}
	}
	return a.do(ctx, http.MethodPut, "/routes/"+url.PathEscape(id), body, nil)
}

// DeleteRoute deletes a route.
func (a *Admin) DeleteRoute(ctx context.Context, id string) error {
	return a.do(ctx, http.MethodDelete, "/routes/"+url.PathEscape(id), nil, nil)
}
