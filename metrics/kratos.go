package metrics

import (
	"context"
	"time"

	"github.com/go-kratos/kratos/v2/errors"
	"github.com/go-kratos/kratos/v2/middleware"
	"github.com/go-kratos/kratos/v2/transport"
)

// Server returns a Kratos server middleware that records every request under the lane the instance
// serves in, so a service's dashboards split by lane with no other change. lane is called per
// request, because an instance's lane changes when it is promoted (registrar.Registration.Lane
// follows the recorded state). service names the service in the labels.
func Server(requests *Requests, service string, lane func() string) middleware.Middleware {
	return func(next middleware.Handler) middleware.Handler {
		return func(ctx context.Context, req any) (any, error) {
			start := time.Now()
			reply, err := next(ctx, req)
			operation := ""
			if tr, ok := transport.FromServerContext(ctx); ok {
				operation = tr.Operation()
			}
			requests.Observe(service, lane(), operation, StatusCode(err), time.Since(start))
			return reply, err
		}
	}
}

// StatusCode is the Kratos status code of a handler's or a call's error: 200 for none, else the
// error's HTTP-like code (500 for an error that carries none).
func StatusCode(err error) int {
	if err == nil {
		return 200
	}
	return int(errors.FromError(err).Code)
}
