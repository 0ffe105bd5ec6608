package main

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseWithEnv(t *testing.T) {
	env := map[string]string{
		"RATELIMITD_GRPC_ADDR":       "0.0.0.0:9",
		"RATELIMITD_REDIS_URL":       "redis://from-env:6379/0",
		"RATELIMITD_STORAGE_TIMEOUT": "250ms",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	grpcAddr := fs.String("grpc-addr", "127.0.0.1:8081", "")
	redisURL := fs.String("redis-url", "", "")
	timeout := fs.Duration("storage-timeout", time.Second, "")
	other := fs.String("http-addr", "127.0.0.1:8080", "")
	if err := parseWithEnv(fs, []string{"-redis-url", "redis://from-flag:6379/0"}, lookup); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"grpc-addr from the environment", *grpcAddr, "0.0.0.0:9"},
		{"redis-url: the flag wins", *redisURL, "redis://from-flag:6379/0"},
		{"storage-timeout from the environment", timeout.String(), "250ms"},
		{"http-addr default", *other, "127.0.0.1:8080"},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}

	env["RATELIMITD_STORAGE_TIMEOUT"] = "soon"
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Duration("storage-timeout", time.Second, "")
	err := parseWithEnv(fs, nil, lookup)
	if err == nil || !strings.Contains(err.Error(), "RATELIMITD_STORAGE_TIMEOUT") {
		t.Errorf("bad duration in the environment: %v, want an error naming RATELIMITD_STORAGE_TIMEOUT", err)
	}
}

func TestSplitHeader(t *testing.T) {
	for _, c := range []struct{ in, name, value string }{
		{"x-ratelimit-grade: near-limit", "x-ratelimit-grade", "near-limit"},
		{"x-degrade:yes", "x-degrade", "yes"},
		{"-", "-", ""},
		{"", "-", ""},
		{": value", "-", ""},
	} {
		if n, v := splitHeader(c.in); n != c.name || v != c.value {
			t.Errorf("splitHeader(%q) = %q, %q; want %q, %q", c.in, n, v, c.name, c.value)
		}
	}
}

func TestUnknownEnv(t *testing.T) {
	known := map[string]bool{"RATELIMITD_CONFIG": true}
	got := unknownEnv([]string{"RATELIMITD_CONFIG=/etc", "RATELIMITD_CONFG=/etc", "HOME=/root", "RATELIMITD_=x"}, known)
	if strings.Join(got, ",") != "RATELIMITD_CONFG,RATELIMITD_" {
		t.Errorf("unknownEnv = %v, want [RATELIMITD_CONFG RATELIMITD_]", got)
	}
}

func TestValidHeaderName(t *testing.T) {
	for name, want := range map[string]bool{
		"x-ratelimit-grade": true, "x_degrade.1": true, "": false, "Bad": false, "a b": false, "a:b": false, "é": false,
	} {
		if got := validHeaderName(name); got != want {
			t.Errorf("validHeaderName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParseWithEnvIntegers(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Int("replicas", 1, "")
	err := parseWithEnv(fs, nil, func(k string) (string, bool) { return "abc", k == "RATELIMITD_REPLICAS" })
	if err == nil || !strings.Contains(err.Error(), "RATELIMITD_REPLICAS") || !strings.Contains(err.Error(), "want an integer") {
		t.Errorf("RATELIMITD_REPLICAS=abc: %v, want an error naming the variable and asking for an integer", err)
	}
}
