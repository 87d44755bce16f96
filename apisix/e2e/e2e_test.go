//go:build e2e

package e2e

import "testing"

// TestGatewayEndToEnd runs the check against the gateway the environment names (make e2e-apisix).
func TestGatewayEndToEnd(t *testing.T) { Run(t, FromEnv()) }
