package algorithms

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// BenchmarkDecide measures one decision per Decide call, admitted, on one key, for each
// algorithm on the memory store and on a real redis-server (one EVALSHA round trip).
func BenchmarkDecide(b *testing.B) {
	srv := redisserver.Start(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { _ = c.Close() })
	deciders := []struct {
		name string
		d    Decider
	}{
		{"memory", NewMemory(storage.NewMemory(storage.MemoryOptions{}))},
		{"redis", NewRedis(storage.NewRedis(c))},
	}
	for _, dc := range deciders {
		for _, n := range []Name{FixedWindow, SlidingWindow, TokenBucket} {
			b.Run(dc.name+"/"+string(n), func(b *testing.B) {
				reqs := []Request{{Algorithm: n, Key: "{b}" + string(n), Limit: 1 << 30, Window: time.Second, Hits: 1}}
				ctx := context.Background()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := dc.d.Decide(ctx, reqs); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
