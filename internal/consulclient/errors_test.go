package consulclient_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consulclient"
)

// TestIsConnLimit: the agent's 429 is recognised however it reached the caller (the API client's
// status error, wrapped, reduced to its text by Redact, or the transport's failure when the answer
// came before the request); a "429" that is part of a name or a number is not.
func TestIsConnLimit(t *testing.T) {
	refused := api.StatusError{Code: 429, Body: "Your IP is issuing too many concurrent connections, please rate limit your calls"}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{refused, true},
		{fmt.Errorf("reading segment vip: %w", refused), true},
		{consulclient.Redact(fmt.Errorf("token s3cret: %w", refused), "s3cret"), true},
		{errors.New(`Get "http://127.0.0.1:8500/v1/health/service/a": net/http: readLoopPeekFailLocked: <nil>`), true},
		{errors.New("HTTP/1.1 429 Too Many Requests (the agent closed the connection at once)"), true},
		{nil, false},
		{api.StatusError{Code: 500, Body: "rpc error"}, false},
		{errors.New("registrar: not found: service order429 has no instances"), false},
		{errors.New("history key graylane/services/a/history/2025-06-01T10:04:05.000429Z is not valid JSON"), false},
	} {
		if got := consulclient.IsConnLimit(tc.err); got != tc.want {
			t.Errorf("IsConnLimit(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
