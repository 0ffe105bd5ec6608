package client_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/client"
	"github.com/ratelimitd/ratelimitd/config"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
	"github.com/ratelimitd/ratelimitd/server"
	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/testclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// limiter is a real ratelimitd (server.New on the memory store, rules of testdata/) served on
// a loopback port, 10s into a minute on a set clock.
type limiter struct {
	clock  *testclock.Clock
	addr   string
	client *client.Client
}

func startLimiter(t *testing.T) *limiter {
	t.Helper()
	set, err := config.Load("testdata")
	if err != nil {
		t.Fatal(err)
	}
	c := testclock.New(time.Unix(1_800_000_000, 0).Truncate(time.Minute).Add(10 * time.Second))
	srv := server.New(server.Options{
		Decider: algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{Now: c.Now})),
	})
	srv.SetRules(set)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
	})
	return &limiter{clock: c, addr: lis.Addr().String(), client: client.New(conn, client.Options{Now: c.Now, Timeout: 2 * time.Second})}
}

// deadLimiter is a client of a ratelimitd that is not there.
func deadLimiter(t *testing.T) *client.Client {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	c, err := client.Dial(addr, client.Options{}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// checkReq is a request of domain "client" with one descriptor "k=v/k=v".
func checkReq(path string, cost uint64) *ratelimitdv1.CheckRequest {
	d := &ratelimitdv1.Descriptor{}
	for _, kv := range strings.Split(path, "/") {
		k, v, _ := strings.Cut(kv, "=")
		d.Entries = append(d.Entries, &ratelimitdv1.Entry{Key: k, Value: v})
	}
	return &ratelimitdv1.CheckRequest{Domain: "client", Descriptors: []*ratelimitdv1.Descriptor{d}, Cost: cost}
}

// fromMetadata limits calls by the descriptor in the incoming metadata key mdKey
// ("k=v/k=v"), with the cost in "cost"; calls without it are not limited.
func fromMetadata(mdKey string) client.DescriptorFunc {
	return func(ctx context.Context, _ string, _ any) *ratelimitdv1.CheckRequest {
		md, _ := metadata.FromIncomingContext(ctx)
		path := first(md, mdKey)
		if path == "" {
			return nil
		}
		cost, _ := strconv.ParseUint(first(md, "cost"), 10, 64)
		return checkReq(path, cost)
	}
}

func first(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// app is a service under test: the health service, whose Check and Watch count their calls
// and run next (nil: answer SERVING).
type app struct {
	healthpb.UnimplementedHealthServer
	calls atomic.Int64
	next  func(ctx context.Context) error
}

func (a *app) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	a.calls.Add(1)
	if a.next != nil {
		if err := a.next(ctx); err != nil {
			return nil, err
		}
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (a *app) Watch(_ *healthpb.HealthCheckRequest, ss grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	a.calls.Add(1)
	if a.next != nil {
		if err := a.next(ss.Context()); err != nil {
			return err
		}
	}
	return ss.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// serveApp serves a on a loopback port and returns a client of it.
func serveApp(t *testing.T, a *app, sopts []grpc.ServerOption, dopts ...grpc.DialOption) healthpb.HealthClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(sopts...)
	healthpb.RegisterHealthServer(g, a)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), append(dopts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
	})
	return healthpb.NewHealthClient(conn)
}

// forward copies the incoming metadata of a handler to its outgoing calls.
func forward(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	return metadata.NewOutgoingContext(ctx, md)
}

// call calls Check on h with the metadata pairs kv and returns the trailer and the error.
func call(h healthpb.HealthClient, kv ...string) (metadata.MD, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var tr metadata.MD
	_, err := h.Check(metadata.AppendToOutgoingContext(ctx, kv...), &healthpb.HealthCheckRequest{}, grpc.Trailer(&tr))
	return tr, err
}
