package extplugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/graylane/graylane/gray"
)

// Conf is the plugin's configuration on one route, the JSON string APISIX passes as the conf value
// of ext-plugin-pre-req:
//
//	{"service": "bservice", "sticky_header": "x-user-id", "trusted_cidrs": ["10.0.0.0/8"]}
//
// Only service is required. tag_key, sticky_header and sticky_cookie override, field by field, the
// decision options the service keeps in Consul (`graylane options`), which the Kratos selector
// reads too; leave them out so that the gateway and the services cannot disagree.
type Conf struct {
	// Service is the Consul service whose instances and gray meta decide the lane.
	Service string `json:"service"`
	// Options override the service's decision options: tag_key is the lane header (default
	// gray.DefaultTagKey, which Kratos propagates hop to hop), sticky_header and sticky_cookie hold
	// the key that keeps one user in one lane.
	gray.Options
	// TrustedCIDRs are the client networks whose own lane header is honoured. From any other
	// address the header is removed before the decision.
	TrustedCIDRs []string `json:"trusted_cidrs,omitempty"`
	// EchoHeader, when set, names a response header that tells the client its lane.
	EchoHeader string `json:"echo_header,omitempty"`
	// UnknownWaitMS is how long a request may wait for Consul's first answer on the service, in
	// milliseconds, when the runner has not heard from Consul about it yet (the runner has just
	// started, or the route is the first for a new service). Default DefaultUnknownWait; at most
	// MaxUnknownWait.
	UnknownWaitMS int `json:"unknown_wait_ms,omitempty"`
	// OnUnknown is what such a request gets when the wait passes: "reject" (the default) answers
	// 503 with Retry-After; "base" sends it to the route's own upstream, the base, without a lane
	// header from an untrusted client. Either way the runner counts it and logs the service once.
	OnUnknown string `json:"on_unknown,omitempty"`
}

// Answers to a request whose service's state is not known yet (Conf.OnUnknown).
const (
	OnUnknownReject = "reject"
	OnUnknownBase   = "base"
)

// DefaultUnknownWait and MaxUnknownWait bound how long a request waits for Consul's first answer.
const (
	DefaultUnknownWait = 2 * time.Second
	MaxUnknownWait     = 30 * time.Second
)

// unknownWait returns the conf's wait for Consul's first answer.
func (c *Conf) unknownWait() time.Duration {
	if c.UnknownWaitMS == 0 {
		return DefaultUnknownWait
	}
	return time.Duration(c.UnknownWaitMS) * time.Millisecond
}

// ConfError is a conf that cannot be used. Field is the JSON name of the offending field.
type ConfError struct {
	Field string
	Err   error
}

func (e *ConfError) Error() string {
	if e.Field == "" {
		return "graylane conf: " + e.Err.Error()
	}
	return fmt.Sprintf("graylane conf: %s: %v", e.Field, e.Err)
}

func (e *ConfError) Unwrap() error { return e.Err }

// serviceName is what Consul accepts as a service name in practice (and what an upstream id can
// carry after "graylane-").
var serviceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// headerName is an HTTP token, as nginx passes it through.
var headerName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,128}$`)

// ParseConf decodes and checks a conf. Unknown fields are errors, so that a misspelt option is not
// silently ignored. The error is a *ConfError naming the field.
func ParseConf(in []byte) (*Conf, error) {
	var c Conf
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &ConfError{Err: errors.New("trailing data after the JSON object")}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// jsonError turns a decoding error into a ConfError naming the field where possible.
func jsonError(err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return &ConfError{Field: typeErr.Field, Err: fmt.Errorf("expected %s, got JSON %s", typeErr.Type, typeErr.Value)}
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return &ConfError{Field: strings.Trim(name, `"`), Err: errors.New("unknown field (known: service, tag_key, sticky_header, sticky_cookie, fallback, trusted_cidrs, echo_header, unknown_wait_ms, on_unknown)")}
	}
	return &ConfError{Err: fmt.Errorf("not a JSON object: %w", err)}
}

// Validate checks every field and returns a *ConfError for the first that is wrong.
func (c *Conf) Validate() error {
	switch {
	case c.Service == "":
		return &ConfError{Field: "service", Err: errors.New("required: the Consul service whose lanes the route serves")}
	case !serviceName.MatchString(c.Service):
		return &ConfError{Field: "service", Err: fmt.Errorf("%q: use letters, digits, '-', '_' and '.', at most 63 characters", c.Service)}
	}
	for _, f := range []struct{ name, value string }{
		{"tag_key", c.TagKey}, {"sticky_header", c.StickyHeader}, {"sticky_cookie", c.StickyCookie}, {"echo_header", c.EchoHeader},
	} {
		if f.value != "" && !headerName.MatchString(f.value) {
			return &ConfError{Field: f.name, Err: fmt.Errorf("%q is not a header or cookie name (letters, digits, '-' and '_')", f.value)}
		}
	}
	if !c.Fallback.Valid() {
		return &ConfError{Field: "fallback", Err: fmt.Errorf("%q is not a fallback policy (weighted, none or any)", c.Fallback)}
	}
	if c.UnknownWaitMS < 0 || time.Duration(c.UnknownWaitMS)*time.Millisecond > MaxUnknownWait {
		return &ConfError{Field: "unknown_wait_ms", Err: fmt.Errorf("%d: give 1 to %d milliseconds, or leave it out for %d",
			c.UnknownWaitMS, MaxUnknownWait.Milliseconds(), DefaultUnknownWait.Milliseconds())}
	}
	switch c.OnUnknown {
	case "", OnUnknownReject, OnUnknownBase:
	default:
		return &ConfError{Field: "on_unknown", Err: fmt.Errorf("%q: give %q or %q", c.OnUnknown, OnUnknownReject, OnUnknownBase)}
	}
	if _, err := c.trusted(); err != nil {
		return err
	}
	return nil
}

// trusted parses the trusted networks. A bare address is a network of one.
func (c *Conf) trusted() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range c.TrustedCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, &ConfError{Field: fmt.Sprintf("trusted_cidrs[%d]", i), Err: fmt.Errorf("%q is neither a CIDR nor an address", s)}
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// LaneHeader returns the header the conf names for the lane, or gray.DefaultTagKey. The service's
// options in Consul may name another when the conf names none; the plugin then follows Consul.
func (c *Conf) LaneHeader() string {
	if c.TagKey != "" {
		return c.TagKey
	}
	return gray.DefaultTagKey
}

// JSON returns the conf as compact JSON, the form a route carries as ext-plugin-pre-req's value.
func (c *Conf) JSON() string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // a Conf holds only strings and string slices
	}
	return string(b)
}
