package main

import (
	"io"
	"strings"
	"testing"
)

func TestRedisFlags(t *testing.T) {
	base := []string{"-config", "dir"}
	for _, c := range []struct {
		name string
		args []string
		want string // start of the error; empty for none
	}{
		{"memory", nil, ""},
		{"url", []string{"-redis-url", "redis://127.0.0.1:6379/0"}, ""},
		{"shards", []string{"-redis-shards", "127.0.0.1:1,127.0.0.1:2"}, ""},
		{"cluster", []string{"-redis-cluster", "127.0.0.1:1"}, ""},
		{"sentinel", []string{"-redis-sentinel", "mymaster@127.0.0.1:26379"}, ""},
		{"tls and auth", []string{"-redis-shards", "127.0.0.1:1", "-redis-tls", "-redis-username", "u", "-redis-password", "p"}, ""},
		{"two topologies", []string{"-redis-url", "redis://127.0.0.1:1", "-redis-cluster", "127.0.0.1:1"}, "-redis-url and -redis-cluster: give one Redis topology"},
		{"missing port", []string{"-redis-shards", "127.0.0.1:1,127.0.0.1"}, "-redis-shards: entry 2"},
		{"bad port", []string{"-redis-cluster", "127.0.0.1:x"}, "-redis-cluster: entry 1"},
		{"empty entry", []string{"-redis-shards", "127.0.0.1:1,,127.0.0.1:2"}, "-redis-shards: entry 2: empty address"},
		{"duplicate shard", []string{"-redis-shards", "127.0.0.1:1,127.0.0.1:1"}, "-redis-shards: 127.0.0.1:1 is listed twice"},
		{"sentinel without master", []string{"-redis-sentinel", "127.0.0.1:26379"}, "-redis-sentinel:"},
		{"password without topology", []string{"-redis-password", "p"}, "-redis-password: set, but no Redis topology"},
		{"tls without topology", []string{"-redis-tls"}, "-redis-tls: set, but no Redis topology"},
		{"cert without key", []string{"-redis-url", "redis://127.0.0.1:1", "-redis-tls-cert", "c.pem"}, "-redis-tls-cert and -redis-tls-key"},
		{"credentials twice", []string{"-redis-url", "redis://u:p@127.0.0.1:1", "-redis-password", "q"}, "-redis-url carries user:password"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseServeFlags(append(append([]string{}, base...), c.args...), io.Discard)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case c.want != "" && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
				t.Errorf("got %v, want an error starting with %q", err, c.want)
			}
		})
	}
}

func TestRedisFlagsTLSFiles(t *testing.T) {
	f, err := parseServeFlags([]string{"-config", "dir", "-redis-shards", "127.0.0.1:1", "-redis-tls-ca", "/nonexistent/ca.pem"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.redis.options(); err == nil || !strings.HasPrefix(err.Error(), "-redis-tls-ca:") {
		t.Errorf("missing CA file: %v, want an error naming -redis-tls-ca", err)
	}
	f, err = parseServeFlags([]string{"-config", "dir", "-redis-url", "rediss://127.0.0.1:1/0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o, err := f.redis.options(); err != nil || o.TLS != nil {
		t.Errorf("rediss:// alone: TLS %v, %v; want the URL's own TLS settings", o.TLS, err)
	}
}
