package consultest_test

import (
	"net/http"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/graylane/graylane/internal/consultest"
)

// TestTLSAgentSpeaksHTTP2: an agent started with StartTLS serves its API on HTTPS with a certificate
// its CA vouches for, through the api client's own configuration (CAPem, CAFile), and negotiates
// HTTP/2 with a Go client that offers it.
func TestTLSAgentSpeaksHTTP2(t *testing.T) {
	a := consultest.StartTLS(t)
	for name, tlsConf := range map[string]api.TLSConfig{"CAPem": {CAPem: a.CAPEM}, "CAFile": {CAFile: a.CAFile}} {
		client, err := api.NewClient(&api.Config{Address: a.HTTPSAddr, Scheme: "https", TLSConfig: tlsConf})
		if err != nil {
			t.Fatal(err)
		}
		if leader, err := client.Status().Leader(); err != nil || leader == "" {
			t.Fatalf("%s: leader over HTTPS: %q, %v", name, leader, err)
		}
	}
	tr := &http.Transport{TLSClientConfig: a.TLSClientConfig(), ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(a.HTTPSURL() + "/v1/status/leader")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Proto != "HTTP/2.0" {
		t.Fatalf("the agent's HTTPS port answered with %s, want HTTP/2.0", resp.Proto)
	}
	if _, err := http.Get(a.URL() + "/v1/status/leader"); err != nil {
		t.Fatalf("the plain HTTP port: %v", err)
	}
}
