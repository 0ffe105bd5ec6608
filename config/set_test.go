package config

import (
	"fmt"
	"sync"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
)

// Envoy's descriptor entry is an Entry.
var _ Entry = (*ratelimitv3.RateLimitDescriptor_Entry)(nil)

// limitOf summarises a limit for comparisons: its path and requests per unit, or "none".
func limitOf(l *Limit) string {
	if l == nil {
		return "none"
	}
	return fmt.Sprintf("%s %d", l.Path, l.RequestsPerUnit)
}

func TestLookupShop(t *testing.T) {
	s, err := Load("testdata/shop")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	tests := []struct {
		name    string
		domain  string
		entries []entry
		want    string
	}{
		// The steps of conformance scenario 02-matching.
		{"exact beats the key default", "shop", entries("tier", "gold"), "shop/tier=gold 50"},
		{"key default", "shop", entries("tier", "silver123"), "shop/tier 3"},
		{"wildcard", "shop", entries("path", "/api/orders123"), "shop/path=/api/* 4"},
		{"wildcard matches an empty rest", "shop", entries("path", "/api/"), "shop/path=/api/* 4"},
		{"no match", "shop", entries("path", "/web/123"), "none"},
		{"nested default", "shop", entries("client", "acme", "route", "x123"), "shop/client=acme/route 2"},
		{"nested exact", "shop", entries("client", "acme", "route", "admin"), "shop/client=acme/route=admin 1"},
		{"shorter than the config path, no limit on that node", "shop", entries("client", "acme"), "none"},
		{"deeper than the config path", "shop", entries("user", "d123", "extra", "1"), "none"},
		{"unknown parent value", "shop", entries("client", "other123", "route", "x"), "none"},
		{"allow-listed node without a limit", "shop", entries("allow", "listed"), "none"},
		// Scenario 03 and more.
		{"unlimited", "shop", entries("open", "x"), "shop/open 0"},
		{"shadow mode", "shop", entries("watch", "w"), "shop/watch 1"},
		{"unknown domain", "nosuchdomain", entries("user", "u"), "none"},
		{"unknown key", "shop", entries("nosuchkey", "u"), "none"},
		{"no entries", "shop", nil, "none"},
		{"empty value takes the default", "shop", entries("tier", ""), "shop/tier 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := limitOf(Lookup(s, tt.domain, tt.entries)); got != tt.want {
				t.Errorf("Lookup(%q, %v): got %s, want %s", tt.domain, tt.entries, got, tt.want)
			}
		})
	}

	if got := Lookup(s, "shop", entries("open", "x")); got == nil || !got.Unlimited {
		t.Errorf("open: got %+v, want an unlimited limit", got)
	}
	if got := Lookup(s, "shop", entries("watch", "x")); got == nil || !got.ShadowMode {
		t.Errorf("watch: got %+v, want shadow mode", got)
	}
	if got := Lookup(s, "shop", entries("tier", "gold")); got == nil || got.Name != "gold" {
		t.Errorf("tier=gold: got %+v, want the limit named gold", got)
	}
	if got := Lookup[entry](nil, "shop", entries("tier", "gold")); got != nil {
		t.Errorf("nil set: got %+v, want nil", got)
	}
	if got, want := s.RuleCount(), 11; got != want {
		t.Errorf("RuleCount: got %d, want %d", got, want)
	}
}

func TestLookupWildcards(t *testing.T) {
	s := mustLoad(t, map[string]string{"w.yaml": `
domain: w
descriptors:
  - {key: mid, value: "a*c", rate_limit: {unit: second, requests_per_unit: 1}}
  - {key: many, value: "a*b*c", rate_limit: {unit: second, requests_per_unit: 2}}
  - {key: suffix, value: "*.png", rate_limit: {unit: second, requests_per_unit: 3}}
  - {key: any, value: "*", rate_limit: {unit: second, requests_per_unit: 4}}
  - {key: order, value: "ab*", rate_limit: {unit: second, requests_per_unit: 5}}
  - {key: order, value: "a*", rate_limit: {unit: second, requests_per_unit: 6}}
  - {key: order, value: "abc", rate_limit: {unit: second, requests_per_unit: 7}}
  - {key: order, rate_limit: {unit: second, requests_per_unit: 8}}
  - {key: a, value: "b*", rate_limit: {unit: second, requests_per_unit: 9}}
  - key: k
    value: v1
    descriptors:
      - {key: c, value: x, rate_limit: {unit: second, requests_per_unit: 10}}
  - key: k
    descriptors:
      - {key: c, value: y, rate_limit: {unit: second, requests_per_unit: 11}}
`})
	tests := []struct {
		entries []entry
		want    string
	}{
		{entries("mid", "ac"), "w/mid=a*c 1"},
		{entries("mid", "abbbc"), "w/mid=a*c 1"},
		{entries("mid", "a*c"), "w/mid=a*c 1"},
		{entries("mid", "abcd"), "none"},
		{entries("mid", "c"), "none"},
		{entries("mid", "a"), "none"},
		{entries("many", "abc"), "w/many=a*b*c 2"},
		{entries("many", "a-b-b-c"), "w/many=a*b*c 2"},
		{entries("many", "acb"), "none"},
		{entries("many", "abbc"), "w/many=a*b*c 2"},
		{entries("suffix", "x.png"), "w/suffix=*.png 3"},
		{entries("suffix", ".png"), "w/suffix=*.png 3"},
		{entries("suffix", "x.pngx"), "none"},
		{entries("any", ""), "w/any=* 4"},
		{entries("any", "anything"), "w/any=* 4"},
		{entries("order", "abc"), "w/order=abc 7"}, // exact first
		{entries("order", "abd"), "w/order=ab* 5"}, // then the first wildcard in file order
		{entries("order", "ax"), "w/order=a* 6"},   // later wildcards still apply
		{entries("order", "x"), "w/order 8"},       // then the default
		{entries("a_b", "x"), "none"},              // a wildcard never matches across into the key
		{entries("a", "b"), "w/a=b* 9"},
		{entries("k", "v1", "c", "x"), "w/k=v1/c=x 10"},
		{entries("k", "v1", "c", "y"), "none"}, // no backtracking to the default k
		{entries("k", "v2", "c", "y"), "w/k/c=y 11"},
	}
	for _, tt := range tests {
		if got := limitOf(Lookup(s, "w", tt.entries)); got != tt.want {
			t.Errorf("Lookup(%v): got %s, want %s", tt.entries, got, tt.want)
		}
	}
}

func TestLookupDoesNotAllocate(t *testing.T) {
	s, err := Load("testdata/shop")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	local := [][]entry{
		entries("tier", "gold"),
		entries("tier", "silver"),
		entries("path", "/api/orders"),
		entries("path", "/web/"),
		entries("client", "acme", "route", "admin"),
		entries("client", "acme", "route", "x"),
		entries("user", "u", "extra", "1"),
	}
	envoy := []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "client", Value: "acme"}, {Key: "route", Value: "x"}}
	allocs := testing.AllocsPerRun(100, func() {
		for _, e := range local {
			Lookup(s, "shop", e)
		}
		Lookup(s, "shop", envoy)
		Lookup(s, "nosuchdomain", envoy)
	})
	if allocs != 0 {
		t.Errorf("allocations per run: got %v, want 0", allocs)
	}
	if got, want := limitOf(Lookup(s, "shop", envoy)), "shop/client=acme/route 2"; got != want {
		t.Errorf("Lookup with Envoy entries: got %s, want %s", got, want)
	}
}

func TestLookupConcurrent(t *testing.T) {
	s, err := Load("testdata/shop")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if got, want := limitOf(Lookup(s, "shop", entries("path", "/api/x"))), "shop/path=/api/* 4"; got != want {
					t.Errorf("Lookup: got %s, want %s", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkLookup(b *testing.B) {
	s, err := Load("testdata/shop")
	if err != nil {
		b.Fatalf("Load: %v", err)
	}
	e := entries("client", "acme", "route", "admin")
	for b.Loop() {
		Lookup(s, "shop", e)
	}
}
