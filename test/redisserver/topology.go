package redisserver

import (
	"bytes"
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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of primaries without replicas, built on loopback.
type Cluster struct {
	Nodes []*Server
}

// Addrs lists the nodes' addresses.
func (c *Cluster) Addrs() []string { return Addrs(c.Nodes) }

// StartCluster starts n (at least 3) redis-server processes with cluster mode on, joins them
// with `redis-cli --cluster create` (the slots spread evenly, no replicas) and waits until
// every node reports cluster_state:ok.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	mustHave(t, "redis-cli", "redis-tools")
	c := &Cluster{}
	for range n {
		c.Nodes = append(c.Nodes, Start(t,
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, "redis-cli", args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range c.Nodes {
		for {
			info, err := s.CLI("CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s: no cluster_state:ok within 20s (%v):\n%s", s.Addr, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// CLI runs redis-cli against the server with args and returns its output. It speaks plain TCP
// without authentication.
func (s *Server) CLI(args ...string) (string, error) {
	s.t.Helper()
	mustHave(s.t, "redis-cli", "redis-tools")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host, port, _ := net.SplitHostPort(s.Addr)
	out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	return string(out), err
}

// StartSentinel starts a Sentinel on a free port that monitors master under the name
// masterName with a quorum of 1, and waits until it names master as the primary.
func StartSentinel(t testing.TB, masterName string, master *Server) *Server {
	t.Helper()
	s := newServer(t)
	host, port, _ := net.SplitHostPort(master.Addr)
	conf := filepath.Join(s.dir, "sentinel.conf")
	text := fmt.Sprintf("sentinel monitor %s %s %s 1\nsentinel down-after-milliseconds %s 2000\n", masterName, host, port, masterName)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	s.lead = []string{conf, "--sentinel"}
	s.start()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := s.CLI("SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName)
		if err == nil && strings.Fields(out) != nil && strings.Join(strings.Fields(out), ":") == master.Addr {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("sentinel %s does not name %s as %s within 10s: %v %q", s.Addr, master.Addr, masterName, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TLSFiles are PEM files for a test PKI: a CA, a server certificate for 127.0.0.1 and
// localhost, and a client certificate, all signed by the CA.
type TLSFiles struct {
	CA, Cert, Key, ClientCert, ClientKey string
	// Roots holds the CA, for clients.
	Roots *x509.CertPool
}

// NewTLSFiles writes a fresh CA, server and client certificate into a temporary directory.
func NewTLSFiles(t testing.TB) *TLSFiles {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ratelimitd test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	f := &TLSFiles{Roots: x509.NewCertPool()}
	f.Roots.AddCert(ca)
	f.CA = writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (certFile, keyFile string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     []string{"localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "EC PRIVATE KEY", keyDER)
	}
	f.Cert, f.Key = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	f.ClientCert, f.ClientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return f
}

func writePEM(t testing.TB, dir, name, kind string, der []byte) string {
	t.Helper()
	var b bytes.Buffer
	if err := pem.Encode(&b, &pem.Block{Type: kind, Bytes: der}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartTLS starts a server that listens for TLS only, with the certificates of f. With
// clientCerts it requires a client certificate signed by the CA (mutual TLS).
func StartTLS(t testing.TB, f *TLSFiles, clientCerts bool, args ...string) *Server {
	t.Helper()
	s := newServer(t)
	auth := "no"
	cfg := &tls.Config{RootCAs: f.Roots, MinVersion: tls.VersionTLS12}
	if clientCerts {
		auth = "yes"
		pair, err := tls.LoadX509KeyPair(f.ClientCert, f.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	s.tls = cfg
	s.args = append([]string{
		"--tls-port", strconv.Itoa(s.port), "--tls-cert-file", f.Cert, "--tls-key-file", f.Key,
		"--tls-ca-cert-file", f.CA, "--tls-auth-clients", auth,
	}, args...)
	s.start()
	return s
}
