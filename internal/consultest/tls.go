package consultest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/graylane/graylane/internal/testport"
)

// StartTLS runs a dev agent that serves its HTTP API on HTTPS too (Agent.HTTPSAddr), with a
// certificate for 127.0.0.1 signed by a CA made for the test (Agent.CAPEM, Agent.CAFile), at the
// agent's default limits unless flags say otherwise; it stops the agent in the test's cleanup. The
// plain HTTP port stays open (Agent.HTTPAddr), so one agent serves both kinds of client. Consul's
// HTTPS port speaks HTTP/2 to clients that offer it.
func StartTLS(tb testing.TB, flags ...string) *Agent {
	tb.Helper()
	a, err := StartTLSAgent(tb.TempDir(), flags...)
	if err != nil {
		tb.Fatalf("consultest: %v", err)
	}
	tb.Cleanup(a.Stop)
	return a
}

// StartTLSAgent runs a dev agent as StartTLS does, for programs (a benchmark) rather than tests: the
// CA and the agent's certificate and key are written under dir. The caller must Stop it.
func StartTLSAgent(dir string, flags ...string) (*Agent, error) {
	files, caPEM, err := writeCerts(dir)
	if err != nil {
		return nil, err
	}
	var a *Agent
	err = testport.OnFreshPorts(5, func(ports []int) error {
		a = newAgent(append([]string{"-dev"}, flags...), ports[:4])
		a.serveHTTPS(ports[4], files, caPEM)
		if err := a.start(context.Background()); err != nil {
			a.Stop()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// StartServers runs n server agents that form one cluster, with their data under dir, as
// StartCluster does, for programs rather than tests. The caller must Stop them.
func StartServers(dir string, n int) ([]*Agent, error) { return startServers(dir, n) }

// StartTLSClientAgent runs a client agent (not a server) joined to servers, serving its API on HTTP
// and on HTTPS as StartTLSAgent's agent does, with its data, CA and certificate under dir: what a
// process on a node of a real datacenter talks to. The caller must Stop it.
func StartTLSClientAgent(dir string, servers []*Agent) (*Agent, error) {
	files, caPEM, err := writeCerts(dir)
	if err != nil {
		return nil, err
	}
	var a *Agent
	err = testport.OnFreshPorts(5, func(ports []int) error {
		a = newAgent(nil, ports[:4])
		a.args = append(a.args, "-data-dir", filepath.Join(dir, a.NodeName), "-retry-interval", "200ms")
		for _, s := range servers {
			a.args = append(a.args, "-retry-join", s.SerfLANAddr)
		}
		a.serveHTTPS(ports[4], files, caPEM)
		if err := a.start(context.Background()); err != nil {
			a.Stop()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// serveHTTPS makes the agent serve its API on HTTPS too, on port, with the certificate in files.
func (a *Agent) serveHTTPS(port int, files certFiles, caPEM []byte) {
	a.HTTPSAddr = "127.0.0.1:" + strconv.Itoa(port)
	a.CAPEM, a.CAFile = caPEM, files.ca
	a.args = append(a.args, "-https-port", strconv.Itoa(port), "-hcl", fmt.Sprintf(
		`tls { https { ca_file = %q
			cert_file = %q
			key_file = %q
			verify_incoming = false } }`, files.ca, files.cert, files.key))
}

// HTTPSURL returns the agent's HTTPS API base URL; empty for an agent without HTTPS.
func (a *Agent) HTTPSURL() string {
	if a.HTTPSAddr == "" {
		return ""
	}
	return "https://" + a.HTTPSAddr
}

// TLSClientConfig returns a TLS configuration that trusts the agent's CA, for a client of
// HTTPSAddr; nil for an agent without HTTPS.
func (a *Agent) TLSClientConfig() *tls.Config {
	if a.CAPEM == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.CAPEM)
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// certFiles are the paths of a test CA and of the agent's certificate and key it signed.
type certFiles struct{ ca, cert, key string }

// writeCerts makes a CA and a server certificate for 127.0.0.1 and localhost signed by it, valid
// for a day, and writes them as PEM files under dir.
func writeCerts(dir string) (certFiles, []byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certFiles{}, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "graylane test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return certFiles{}, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return certFiles{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certFiles{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "server.dc1.consul"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost", "server.dc1.consul"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return certFiles{}, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return certFiles{}, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := certFiles{ca: filepath.Join(dir, "ca.pem"), cert: filepath.Join(dir, "agent.pem"), key: filepath.Join(dir, "agent-key.pem")}
	for path, data := range map[string][]byte{
		files.ca:   caPEM,
		files.cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		files.key:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return certFiles{}, nil, err
		}
	}
	return files, caPEM, nil
}
