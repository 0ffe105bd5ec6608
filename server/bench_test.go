package server

import (
	"context"
	"strconv"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
)

// BenchmarkShouldRateLimit measures the handler alone (no transport) on the memory store.
func BenchmarkShouldRateLimit(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(strconv.Itoa(n)+"-descriptors", func(b *testing.B) {
			h := newHarness(b, Options{})
			ctx := context.Background()
			var i int
			for b.Loop() {
				req := &rlsv3.RateLimitRequest{Domain: "d"}
				for j := 0; j < n; j++ {
					req.Descriptors = append(req.Descriptors, &ratelimitv3.RateLimitDescriptor{Entries: entries("big", strconv.Itoa(i%1000))})
				}
				i++
				if _, err := h.srv.ShouldRateLimit(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
