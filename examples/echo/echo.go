// Package echo is the example service's API, shared by the service (examples/backend) and its
// callers (examples/client, and the demo in examples/release): one gRPC method, Who, answered with a
// Reply as JSON in protobuf's StringValue (the service has no .proto: its descriptor is written by
// hand). The service's HTTP side answers every path with the same JSON.
package echo

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Method is the gRPC method's full name.
const Method = "/graylane.example.Echo/Who"

// Reply is what the service answers.
type Reply struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Version  string `json:"version,omitempty"`
	// Serves is the lane the instance serves in (it follows promotions).
	Serves string `json:"serves"`
	// Lane is the lane header the request carried ("" when none).
	Lane string `json:"lane"`
	Path string `json:"path"`
	// Next is the next hop's answer, when the service has one.
	Next *Reply `json:"next,omitempty"`
}

// String is a one-line form: instance (lane) > next instance (lane).
func (r *Reply) String() string {
	s := r.Instance + " (" + r.Serves + ")"
	if r.Next != nil {
		s += " > " + r.Next.String()
	}
	return s
}

// Answerer is what the service implements: its answer to a request for path (Method for gRPC).
type Answerer interface {
	Answer(ctx context.Context, path string) (*Reply, error)
}

type answerer interface{ Answerer }

// Desc describes the gRPC service; register it with an Answerer.
var Desc = grpc.ServiceDesc{
	ServiceName: "graylane.example.Echo",
	HandlerType: (*answerer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Who",
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) {
				r, err := srv.(Answerer).Answer(ctx, Method)
				if err != nil {
					return nil, err
				}
				b, _ := json.Marshal(r)
				return wrapperspb.String(string(b)), nil
			}
			if icpt == nil {
				return h(ctx, in)
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: Method}, h)
		},
	}},
}

// Who calls the service's gRPC method on conn.
func Who(ctx context.Context, conn grpc.ClientConnInterface) (*Reply, error) {
	out := new(wrapperspb.StringValue)
	if err := conn.Invoke(ctx, Method, wrapperspb.String(""), out); err != nil {
		return nil, err
	}
	r := new(Reply)
	if err := json.Unmarshal([]byte(out.GetValue()), r); err != nil {
		return nil, fmt.Errorf("who: %w", err)
	}
	return r, nil
}
