package selector

import (
	kselector "github.com/go-kratos/kratos/v2/selector"
	"google.golang.org/grpc"

	"github.com/graylane/graylane/gray"
	"github.com/graylane/graylane/watch"
)

// Option configures a Filter.
type Option func(*config)

type config struct {
	options  gray.Options
	source   OptionsSource
	watcher  *watch.Watcher
	never    []string
	strict   bool
	filters  []kselector.NodeFilter
	dial     []grpc.DialOption
	problems func(error)
	metrics  *Metrics
}

// OptionsSource supplies the service's decision options, kept once with the service in Consul so
// that the gateway and every client decide alike; watch.OptionsView implements it. Load is
// called on every call and must be cheap and safe for concurrent use.
type OptionsSource interface {
	Load() gray.Options
}

// WithServiceOptions reads the service's decision options from src. Options set on the client
// (WithOptions, WithTagKey, WithStickyHeader, WithStickyCookie) override its non-empty fields. When
// the loaded options change, the next call prepares a new snapshot.
func WithServiceOptions(src OptionsSource) Option { return func(c *config) { c.source = src } }

// WithWatcher reads the meta of the service's instances, and its decision options, through w,
// graylane's own watcher, rather than waiting for the Kratos registry to show them. The contrib
// consul registry waits for a 1 s ticker between its blocking queries, so a change made with
// graylane reaches its nodes up to a second later, while w's blocking query answers as soon as
// Consul commits the change. Which instances exist is still the registry's to say: each node the
// registry gives takes the meta w shows for its address (host:port, from the instance's tagged
// addresses or its service address), and keeps its own when w does not know the address (w has
// not answered yet, or the instance is newer than w's last answer). A second change of w or of the
// node set prepares a new snapshot, on the next call. While w is stale (it cannot reach Consul, or
// its token is refused) its answer is set aside and the nodes keep the registry's meta, which may be
// fresher.
//
// What the watcher cannot hide: when the registry delivers the change too, Kratos' gRPC resolver
// gives each changed instance a new connection (gRPC keys connections by address and attributes,
// and Kratos puts the meta in the attributes). For that handshake the instance is missing from the
// node set, and calls for its lane go where calls go when a lane has no instance: to the base, or,
// in strict mode, nowhere. Without the watcher the same reconnect comes at the moment the change
// is seen, hidden in it.
//
// The filter starts watching its service through w on its first call; w is the caller's: close it
// after the clients that use it (closed earlier, its views turn stale, and the clients go on with
// the registry's meta). Options given with WithServiceOptions take the place of w's.
func WithWatcher(w *watch.Watcher) Option { return func(c *config) { c.watcher = w } }

// WithOptions sets the client's decision options; their non-empty fields override the service's.
func WithOptions(o gray.Options) Option {
	return func(c *config) { c.options = c.options.Override(o) }
}

// WithTagKey sets the header that carries the lane tag (default gray.DefaultTagKey). Keep the
// x-md-global- prefix so that Kratos' metadata middleware carries it from hop to hop.
func WithTagKey(key string) Option { return func(c *config) { c.options.TagKey = key } }

// WithStickyHeader names the header whose value keeps one user in one lane.
func WithStickyHeader(name string) Option {
	return func(c *config) { c.options.StickyHeader = name }
}

// WithStickyCookie names the cookie used as the sticky key when the sticky header is absent.
func WithStickyCookie(name string) Option {
	return func(c *config) { c.options.StickyCookie = name }
}

// WithNeverLanes names lanes this client must never enter, for example a batch job that must never
// reach a canary. Their instances are left out before the decision: a tag naming one of them is
// ignored, and when only their instances are left, the call fails rather than entering them.
func WithNeverLanes(lanes ...string) Option {
	return func(c *config) { c.never = append(c.never, lanes...) }
}

// WithStrict turns the fallback off: a call that would fall back to every instance fails instead
// with a *StrictError (for HTTP, with Kratos' 503 NODE_NOT_FOUND unless the client has the
// StrictErrors middleware). For isolation tests.
func WithStrict() Option { return func(c *config) { c.strict = true } }

// WithNodeFilters adds Kratos node filters that run before graylane's. Kratos' WithNodeFilter
// replaces the filter list, so give other filters here rather than to the client. They should
// return the same nodes for the same node set (a zone filter, say): graylane prepares a new snapshot
// whenever its input changes.
func WithNodeFilters(filters ...kselector.NodeFilter) Option {
	return func(c *config) { c.filters = append(c.filters, filters...) }
}

// WithDialOptions adds gRPC dial options. Kratos' grpc.WithOptions replaces the dial option list
// and GRPC sets it, so give other dial options here rather than to the client.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dial = append(c.dial, opts...) }
}

// WithProblems calls report with each problem found when a node set is prepared (meta that does
// not decode, lane conflicts), once per prepared node set.
func WithProblems(report func(error)) Option { return func(c *config) { c.problems = report } }
