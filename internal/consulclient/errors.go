package consulclient

import (
	"errors"
	"net/http"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Redact removes a secret from an error's text: a token never appears in a log or an error.
func Redact(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), secret, "[redacted]"))
}

// HTTPStatus extracts the HTTP status code of a Consul API error, or 0.
func HTTPStatus(err error) int {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	if err != nil && strings.Contains(err.Error(), "Unexpected response code: 404") {
		return http.StatusNotFound
	}
	return 0
}

// IsPermissionDenied reports whether Consul refused a request for its token.
func IsPermissionDenied(err error) bool {
	if err == nil {
		return false
	}
	if code := HTTPStatus(err); code == http.StatusForbidden {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found")
}

// IsConnLimit reports whether an error is a Consul agent refusing a connection from this address
// (limits.http_max_conns_per_client). The agent answers 429 Too Many Requests as soon as it accepts
// the connection, before it reads a request: when the answer arrives before Go's HTTP client has
// sent the request, the client sees an unsolicited response on an idle connection and fails with
// "readLoopPeekFailLocked" instead of the status. An error that kept only its text (Redact) is
// recognised by the API client's wording of the status or by the status line; a bare "429"
// elsewhere in a text (a service named order429, an index) is no refusal.
func IsConnLimit(err error) bool {
	if err == nil {
		return false
	}
	if HTTPStatus(err) == http.StatusTooManyRequests {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "Unexpected response code: 429") || strings.Contains(msg, "429 Too Many Requests") ||
		strings.Contains(msg, "readLoopPeekFailLocked")
}
