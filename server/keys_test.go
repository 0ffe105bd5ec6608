package server

import (
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/ratelimitd/ratelimitd/config"
)

func entries(kv ...string) []*ratelimitv3.RateLimitDescriptor_Entry {
	var es []*ratelimitv3.RateLimitDescriptor_Entry
	for i := 0; i+1 < len(kv); i += 2 {
		es = append(es, &ratelimitv3.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return es
}

var minute = &config.Limit{Algorithm: config.FixedWindow, Window: time.Minute}

func TestCounterKey(t *testing.T) {
	tests := []struct {
		domain string
		kv     []string
		limit  *config.Limit
		want   string
	}{
		{"shop", []string{"user", "u1"}, minute, "p:{shop|user=u1}:fw:60000"},
		{"shop", []string{"a", "1", "b", "2"}, minute, "p:{shop|a=1|b=2}:fw:60000"},
		{"s|x", []string{"k=v", "{}%"}, minute, "p:{s%7Cx|k%3Dv=%7B%7D%25}:fw:60000"},
		{"shop", []string{"k", ""}, &config.Limit{Algorithm: config.TokenBucket, Window: time.Second}, "p:{shop|k=}:tb:1000"},
		{"shop", []string{"k", "v"}, &config.Limit{Algorithm: config.SlidingWindow, Window: time.Hour}, "p:{shop|k=v}:sw:3600000"},
	}
	for _, tt := range tests {
		if got := counterKey("p:", tt.domain, entries(tt.kv...), tt.limit); got != tt.want {
			t.Errorf("counterKey(%q, %q) = %q, want %q", tt.domain, tt.kv, got, tt.want)
		}
	}
}

// TestCounterKeyInjective: descriptors that differ never share a key, whatever their values
// contain. These pairs collide under keys joined with '_' (the reference's scheme).
func TestCounterKeyInjective(t *testing.T) {
	pairs := [][2][]string{
		{{"a_b", "c"}, {"a", "b_c"}},
		{{"a", "b|c=d"}, {"a", "b", "c", "d"}},
		{{"a", "b}"}, {"a", "b%7D"}},
		{{"a", ""}, {"a="}},
		{{"a", "x", "b", ""}, {"a", "x|b="}},
	}
	for _, p := range pairs {
		x := counterKey("", "d", entries(p[0]...), minute)
		y := counterKey("", "d", entries(p[1]...), minute)
		if x == y {
			t.Errorf("%q and %q share the key %q", p[0], p[1], x)
		}
	}
}

func FuzzCounterKeyInjective(f *testing.F) {
	f.Add("d", "k", "v", "d", "k", "v2")
	f.Add("a|b", "c", "d", "a", "b|c", "d")
	f.Add("{", "}", "=", "%7B", "%7D", "%3D")
	f.Fuzz(func(t *testing.T, d1, k1, v1, d2, k2, v2 string) {
		x := counterKey("", d1, entries(k1, v1), minute)
		y := counterKey("", d2, entries(k2, v2), minute)
		if (x == y) != (d1 == d2 && k1 == k2 && v1 == v2) {
			t.Errorf("(%q,%q,%q) -> %q and (%q,%q,%q) -> %q", d1, k1, v1, x, d2, k2, v2, y)
		}
	})
}

func BenchmarkCounterKey(b *testing.B) {
	es := entries("client", "acme", "route", "/api/orders")
	for b.Loop() {
		_ = counterKey("ratelimitd:", "shop", es, minute)
	}
}
