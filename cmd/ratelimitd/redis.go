package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	neturl "net/url"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/ratelimitd/ratelimitd/storage"
)

// redisFlags are serve's Redis settings: one topology, and AUTH and TLS for all of them.
type redisFlags struct {
	url      string
	shards   string
	cluster  string
	sentinel string

	username string
	password string

	tls           bool
	tlsCA         string
	tlsCert       string
	tlsKey        string
	tlsServerName string

	// Set by check.
	shardAddrs     []string
	clusterAddrs   []string
	sentinelMaster string
	sentinelAddrs  []string
}

func (r *redisFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.url, "redis-url", "", "one Redis server: redis://[user:password@]host:port/db, or rediss:// for TLS")
	fs.StringVar(&r.shards, "redis-shards", "", "independent Redis servers host:port,host:port,... with keys spread by consistent (rendezvous) hashing")
	fs.StringVar(&r.cluster, "redis-cluster", "", "Redis Cluster seed nodes host:port,host:port,...")
	fs.StringVar(&r.sentinel, "redis-sentinel", "", "a Sentinel-managed primary: master@host:port,host:port,... (the primary's name and the Sentinels)")
	fs.StringVar(&r.username, "redis-username", "", "Redis ACL user (AUTH username password), for every topology")
	fs.StringVar(&r.password, "redis-password", "", "Redis password (AUTH), for every topology")
	boolFlag(fs, &r.tls, "redis-tls", false, "connect to Redis over TLS (implied by rediss:// and by the other -redis-tls-* flags)")
	fs.StringVar(&r.tlsCA, "redis-tls-ca", "", "PEM file of the CA(s) that sign Redis's certificates (default: the system's roots)")
	fs.StringVar(&r.tlsCert, "redis-tls-cert", "", "PEM client certificate for Redis (mutual TLS); with -redis-tls-key")
	fs.StringVar(&r.tlsKey, "redis-tls-key", "", "PEM private key of -redis-tls-cert")
	fs.StringVar(&r.tlsServerName, "redis-tls-server-name", "", "name to verify Redis's certificate against (default: the host of each address)")
}

// any reports whether a Redis topology is configured.
func (r *redisFlags) any() bool {
	return r.url != "" || r.shards != "" || r.cluster != "" || r.sentinel != ""
}

// check validates the flags without touching files or the network: one topology at most,
// well-formed addresses, and no AUTH or TLS setting without a topology.
func (r *redisFlags) check() error {
	var given []string
	for _, t := range []struct{ name, value string }{
		{"-redis-url", r.url}, {"-redis-shards", r.shards}, {"-redis-cluster", r.cluster}, {"-redis-sentinel", r.sentinel},
	} {
		if t.value != "" {
			given = append(given, t.name)
		}
	}
	if len(given) > 1 {
		return fmt.Errorf("%s: give one Redis topology, not several", strings.Join(given, " and "))
	}
	if len(given) == 0 {
		for _, s := range []struct{ name, value string }{
			{"-redis-username", r.username}, {"-redis-password", r.password}, {"-redis-tls-ca", r.tlsCA},
			{"-redis-tls-cert", r.tlsCert}, {"-redis-tls-key", r.tlsKey}, {"-redis-tls-server-name", r.tlsServerName},
		} {
			if s.value != "" {
				return fmt.Errorf("%s: set, but no Redis topology is (-redis-url, -redis-shards, -redis-cluster or -redis-sentinel)", s.name)
			}
		}
		if r.tls {
			return errors.New("-redis-tls: set, but no Redis topology is (-redis-url, -redis-shards, -redis-cluster or -redis-sentinel)")
		}
		return nil
	}
	var err error
	switch {
	case r.shards != "":
		if r.shardAddrs, err = storage.ParseAddrs(r.shards); err != nil {
			return fmt.Errorf("-redis-shards: %w", err)
		}
		seen := map[string]bool{}
		for _, a := range r.shardAddrs {
			if seen[a] {
				return fmt.Errorf("-redis-shards: %s is listed twice", a)
			}
			seen[a] = true
		}
	case r.cluster != "":
		if r.clusterAddrs, err = storage.ParseAddrs(r.cluster); err != nil {
			return fmt.Errorf("-redis-cluster: %w", err)
		}
	case r.sentinel != "":
		if r.sentinelMaster, r.sentinelAddrs, err = storage.ParseSentinel(r.sentinel); err != nil {
			return fmt.Errorf("-redis-sentinel: %w", err)
		}
	case r.url != "":
		u, err := neturl.Parse(r.url)
		if err == nil && u.User != nil && (r.username != "" || r.password != "") {
			return errors.New("-redis-url carries user:password and -redis-username or -redis-password is set too: give the credentials once")
		}
	}
	if (r.tlsCert == "") != (r.tlsKey == "") {
		return errors.New("-redis-tls-cert and -redis-tls-key: give both (a client certificate and its key) or neither")
	}
	return nil
}

// topologyFlag names the flag of the configured topology.
func (r *redisFlags) topologyFlag() string {
	switch {
	case r.shards != "":
		return "-redis-shards"
	case r.cluster != "":
		return "-redis-cluster"
	case r.sentinel != "":
		return "-redis-sentinel"
	}
	return "-redis-url"
}

// options returns the storage options of a checked set of flags, with the TLS files loaded.
func (r *redisFlags) options() (storage.Options, error) {
	o := storage.Options{
		URL:            r.url,
		Shards:         r.shardAddrs,
		Cluster:        r.clusterAddrs,
		SentinelMaster: r.sentinelMaster,
		Sentinels:      r.sentinelAddrs,
		Username:       r.username,
		Password:       r.password,
	}
	if !r.tls && r.tlsCA == "" && r.tlsCert == "" && r.tlsServerName == "" {
		return o, nil // plain, or a rediss:// URL with the system's roots
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: r.tlsServerName}
	if r.tlsCA != "" {
		pem, err := os.ReadFile(r.tlsCA)
		if err != nil {
			return o, fmt.Errorf("-redis-tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("-redis-tls-ca: %s holds no PEM certificate", r.tlsCA)
		}
	}
	if r.tlsCert != "" {
		pair, err := tls.LoadX509KeyPair(r.tlsCert, r.tlsKey)
		if err != nil {
			return o, fmt.Errorf("-redis-tls-cert/-redis-tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	o.TLS = cfg
	return o, nil
}

// describe returns log fields that say which Redis is used, without secrets.
func (r *redisFlags) describe() []zap.Field {
	fields := []zap.Field{zap.String("topology", strings.TrimPrefix(r.topologyFlag(), "-redis-"))}
	switch {
	case r.shards != "":
		fields = append(fields, zap.Strings("shards", r.shardAddrs))
	case r.cluster != "":
		fields = append(fields, zap.Strings("seeds", r.clusterAddrs))
	case r.sentinel != "":
		fields = append(fields, zap.String("master", r.sentinelMaster), zap.Strings("sentinels", r.sentinelAddrs))
	default:
		if u, err := neturl.Parse(r.url); err == nil {
			fields = append(fields, zap.String("url", u.Redacted()))
		}
	}
	tlsOn := r.tls || r.tlsCA != "" || r.tlsCert != "" || r.tlsServerName != "" || strings.HasPrefix(r.url, "rediss://")
	fields = append(fields, zap.Bool("tls", tlsOn))
	if r.username != "" {
		fields = append(fields, zap.String("username", r.username))
	}
	return fields
}

// isAuthError reports whether err is Redis refusing the credentials or the user's rights.
func isAuthError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "WRONGPASS") || strings.Contains(s, "NOAUTH") || strings.Contains(s, "NOPERM")
}
