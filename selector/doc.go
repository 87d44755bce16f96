// Package selector routes Kratos service-to-service calls by graylane's gray rules: the same
// canary, blue/green, weight and match rules as the gateway, decided by the same
// gray.Snapshot.Decide, and one lane held across every hop that has it.
//
// A client needs one option:
//
//	conn, err := grpc.DialInsecure(ctx,
//		grpc.WithEndpoint("discovery:///bservice"),
//		grpc.WithDiscovery(r),
//		selector.GRPC(selector.WithStickyHeader("x-user-id")),
//	)
//
//	client, err := http.NewClient(ctx,
//		http.WithEndpoint("discovery:///bservice"),
//		http.WithDiscovery(r),
//		selector.HTTP(selector.WithStickyHeader("x-user-id")),
//	)
//
// The option turns Kratos' subsetting off (with its default of 25 nodes, a client of a service
// with more instances may never see the canary) and installs a node filter (Filter). Kratos'
// WithNodeFilter, WithSubset and, for gRPC, WithOptions replace what the option set when given
// after it: give other node filters and dial options to the option (WithNodeFilters,
// WithDialOptions).
//
// # Preparing and deciding
//
// Instances come from the Kratos registry (the consul contrib registry maps Consul service meta to
// the node's metadata verbatim). That registry waits for a 1 s ticker between its blocking queries,
// so a change committed soon after another reaches the client up to a second later. With
// WithWatcher the filter takes each node's meta from graylane's own watcher (watch.Watcher),
// whose blocking query answers as soon as Consul commits a change, matched to the node by address;
// the registry still says which instances there are, and a node the watcher does not know keeps
// its own meta. The filter keeps a gray.Snapshot keyed by the node set it is
// given: when the set changes (a discovery update, a meta change, a connection that came up or went
// away) it decodes the meta once and swaps the snapshot atomically; a call compares the node set
// with the key (two machine words per node) and reads the snapshot. The filter's own work allocates
// nothing.
//
// The filter returns elements of its input only (the prepared lane's nodes, a slice owned by the
// snapshot that the default selector copies), never writes into the input, and returns an empty set
// only when no instance may take the call (the service's fallback policy, gray.Fallback, says where
// the base's calls go when the base has no registered instance) or when the call must wait.
//
// # Lanes by registration, not by connection
//
// Kratos' own gRPC balancer hands its selector the instances whose connections are ready, so at a
// client's start, or while stable's connections come back, a weight-0 canary that connected first
// looked like the only instance. GRPC and Propagation select graylane's gRPC balancer instead
// (BalancerName): the same picker, given every instance the resolver names, those without a ready
// connection marked pending. A call whose lane has registered instances but none connected waits
// for them, as gRPC waits when no connection at all is ready, and fails at its deadline with
// *LaneUnavailableError (gRPC code Unavailable); it never goes to another lane. Kratos' unary calls
// have a 2 s deadline unless the client sets one (grpc.WithTimeout). HTTP clients need nothing: Kratos'
// HTTP selector is given every registered instance.
//
// Options: WithNeverLanes (lanes a client must never enter),
// WithStrict (no fallback: a call fails with *StrictError; an HTTP call needs the StrictErrors
// middleware for that, else it fails with Kratos' 503),
// WithTagKey, WithStickyHeader, WithStickyCookie, and WithServiceOptions (or WithWatcher) for the
// service's options kept in Consul, which client options override.
//
// # What a decision can see
//
// The request view reads the call's context without copying. Outgoing attributes come first; when
// the call is made inside a Kratos handler (its context derives from the handler's), the incoming
// request supplies what the outgoing call lacks, so that rules on the original caller's request
// (cookie, path, client address, user id) still hold on the next hop.
//
//	attribute        gRPC unary            gRPC stream            HTTP Invoke          HTTP Do
//	lane tag,        client transport      outgoing gRPC          request headers      incoming request
//	headers,         header (what client   metadata, Kratos       (what client         only
//	cookie           middleware set, and   client metadata;       middleware set);
//	                 metadata.Client()'s   then the incoming      then the incoming
//	                 copies); then the     request                request
//	                 incoming request
//	path             incoming request's path (HTTP) or method (gRPC); outside a handler: the
//	                 call's full method    full method            the URL path         empty
//	query            incoming HTTP request's; outside a handler:
//	                 empty                 empty                  the raw query        empty
//	method           incoming request's; outside a handler:
//	                 POST                  POST                   the request's        empty
//	client address   incoming request's first X-Forwarded-For entry, else its peer address;
//	                 outside a handler: none, for every kind of call
//	tag carried on   per-RPC metadata      per-RPC metadata       set on the request   not possible
//
// A missing attribute is absent to the rules: a header condition does not hold (an "absent"
// condition does), path, query and method conditions see an empty value, and a client_ip condition
// does not hold without an address. Without a sticky key the weight step
// draws a random bucket per call, so the share holds but a user is not kept in one lane. Without a
// tag the decision goes on to match, weight and base. Metadata set with gRPC's
// AppendToOutgoingContext on a unary call is not read (reading it copies it): set headers on unary
// calls through Kratos (client metadata with metadata.Client(), or client middleware).
//
// # Lane propagation
//
// When a call is routed into a gray lane (gray.Decision.Propagate) or arrives with a lane tag, the
// callee must receive the tag so that its own calls carry it on. A node filter runs inside the
// picker and cannot change the call it filters, so the option adds a gRPC unary and stream
// interceptor that hand the filter a per-call record, and per-RPC metadata that gRPC asks for after
// the pick, while it builds the call's headers: the filter records the tag, the metadata sends it.
// A tag the call already carries is never replaced: the lane chosen at the first hop holds. Kratos'
// metadata middleware (metadata.Server() on servers, metadata.Client() on clients) carries x-md-global-
// keys on from hop to hop for unary calls; streams skip Kratos' client middleware, and the option's
// metadata carries the tag instead. For an HTTP Invoke the filter sets the tag on the outgoing
// request. Client.Do skips Kratos' client transport: set the tag header on the request yourself.
//
// # Concurrency
//
// A Filter and the options it returns are safe for concurrent use by any number of calls. The filter
// starts no goroutine (with WithWatcher, the watcher runs the blocking queries, and its Close ends
// them); a gRPC or HTTP client with the option leaves none behind after Close (Kratos'
// HTTP client watches discovery with the context given to NewClient: cancel it too).
package selector
