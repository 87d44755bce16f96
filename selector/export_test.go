package selector

import "context"

// CallStarter returns a function that does, on every call, what GRPC's unary interceptor does when
// a call starts (a new call record, both transports looked up), over the context the interceptor
// received for the call whose picker context is picked. Benchmarks use it to count that work too.
func CallStarter(picked context.Context) func() context.Context {
	parent := picked.Value(callKey).(*callCtx).Context
	return func() context.Context {
		c := &callCtx{Context: parent}
		c.begin(parent, false)
		return c
	}
}
