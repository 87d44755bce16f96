package selector

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// StrictError is returned for a call that strict mode refused: no lane of the service takes it and
// the decision would have fallen back to every instance. gRPC calls through GRPC return it; HTTP
// calls return it when the client has the StrictErrors middleware.
type StrictError struct {
	Service string
}

func (e *StrictError) Error() string {
	return fmt.Sprintf("graylane: strict mode: no lane of %s takes this call, and the fallback is off", e.Service)
}

// LaneUnavailableError is returned for a gRPC call whose lane had registered instances, none of
// which had a ready connection before the call's deadline (or cancellation). The call waited for
// them rather than going to another lane: a weight-0 canary never takes a production call because
// stable's connections are still being made. It carries gRPC's code Unavailable, as Kratos' own
// "no available node" error does; Err is what gRPC returned.
type LaneUnavailableError struct {
	Service string
	Lane    string
	Err     error
}

func (e *LaneUnavailableError) Error() string {
	return fmt.Sprintf("graylane: lane %s of %s has registered instances but none was connected before the call ended: %v",
		e.Lane, e.Service, e.Err)
}

func (e *LaneUnavailableError) Unwrap() error { return e.Err }

// GRPCStatus gives the error gRPC's code Unavailable, so that Kratos and gRPC callers see it as
// they see a service without instances.
func (e *LaneUnavailableError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error())
}
