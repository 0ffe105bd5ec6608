// Package bench holds the Go benchmarks behind test/bench/run.sh: the real server code driven
// over loopback gRPC, next to a fixed-response server on the same transport, for CPU profiles:
//
//	go test ./test/bench -run '^$' -bench GRPC -cpuprofile cpu.out
//	go tool pprof -top test/bench/bench.test cpu.out
package bench

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	"github.com/ratelimitd/ratelimitd/server"
	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// fixedServer answers every request with the same OK response: the transport's floor.
type fixedServer struct {
	rlsv3.UnimplementedRateLimitServiceServer
}

var fixedResponse = &rlsv3.RateLimitResponse{
	OverallCode: rlsv3.RateLimitResponse_OK,
	Statuses:    []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: rlsv3.RateLimitResponse_OK}},
}

func (fixedServer) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return fixedResponse, nil
}

// serveGRPC serves register's services on a free loopback port until the benchmark ends and
// returns a client of it.
func serveGRPC(b *testing.B, register func(*grpc.Server)) rlsv3.RateLimitServiceClient {
	b.Helper()
	var lc net.ListenConfig
	lis, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer()
	register(g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cc.Close()
		g.Stop()
		<-done
	})
	return rlsv3.NewRateLimitServiceClient(cc)
}

// serveRatelimitd serves the real server, on the bench configuration, over d.
func serveRatelimitd(b *testing.B, d algorithms.Decider) rlsv3.RateLimitServiceClient {
	b.Helper()
	set, err := config.Load("config")
	if err != nil {
		b.Fatal(err)
	}
	srv := server.New(server.Options{Decider: d})
	srv.SetRules(set)
	return serveGRPC(b, srv.Register)
}

// request is the seq-th request of n descriptors of key, over values counters.
func request(key string, n, values int, seq int64) *rlsv3.RateLimitRequest {
	req := &rlsv3.RateLimitRequest{Domain: "bench"}
	for i := range n {
		v := strconv.FormatInt((seq*7+int64(i))%int64(values), 10)
		req.Descriptors = append(req.Descriptors, &ratelimitv3.RateLimitDescriptor{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: key, Value: v}},
		})
	}
	return req
}

// drive sends requests from parallel goroutines (RunParallel) until the benchmark is done.
func drive(b *testing.B, c rlsv3.RateLimitServiceClient, key string, n, values int) {
	b.Helper()
	var seq atomic.Int64
	b.SetParallelism(8) // 8 x GOMAXPROCS requests in flight
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := c.ShouldRateLimit(ctx, request(key, n, values, seq.Add(1)))
			cancel()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkGRPC measures ShouldRateLimit over loopback gRPC: the fixed-response server, the
// real server on the memory store and on a real redis-server, under the limit (key fw, 1000
// values) and over it (key over, 10/s, 4 values) without and with the over-limit cache. Client
// and server share the process, so a CPU profile shows both; the client's share is the same in
// every case.
func BenchmarkGRPC(b *testing.B) {
	srv := redisserver.Start(b)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	b.Cleanup(func() { _ = client.Close() })
	memory := algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{}))
	onRedis := algorithms.NewRedis(storage.NewRedis(client))
	cached := func(d algorithms.Decider) algorithms.Decider {
		return algorithms.NewOverLimitCache(d, algorithms.OverLimitCacheOptions{Size: 10000})
	}
	fixed := serveGRPC(b, func(g *grpc.Server) { rlsv3.RegisterRateLimitServiceServer(g, fixedServer{}) })
	for _, n := range []int{1, 3} {
		desc := strconv.Itoa(n) + "-desc"
		b.Run("fixed-response/"+desc, func(b *testing.B) { drive(b, fixed, "fw", n, 1000) })
		for _, s := range []struct {
			name string
			d    algorithms.Decider
		}{
			{"memory", memory},
			{"redis", onRedis},
			{"redis-cache", cached(onRedis)},
		} {
			c := serveRatelimitd(b, s.d)
			b.Run(s.name+"/under/"+desc, func(b *testing.B) { drive(b, c, "fw", n, 1000) })
			b.Run(s.name+"/over/"+desc, func(b *testing.B) { drive(b, c, "over", n, 4) })
		}
	}
}
