package selector

import "fmt"

// StrictError is returned for a call that strict mode refused: no lane of the service takes it and
// the decision would have fallen back to every instance. gRPC calls through GRPC return it; HTTP
// calls return it when the client has the StrictErrors middleware.
type StrictError struct {
	Service string
}

func (e *StrictError) Error() string {
	return fmt.Sprintf("graylane: strict mode: no lane of %s takes this call, and the fallback is off", e.Service)
}
