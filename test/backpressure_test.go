package test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ratelimitd/ratelimitd/client"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// bpKeys are the metadata keys the chain's services read and forward: "b" and "c" name the
// descriptor ("k=v/k=v") that B and C check, "cost" is C's cost.
var bpKeys = []string{"b", "c", "cost"}

// bpApp is one service of the chain: the health service, whose Check runs next (nil: answer
// SERVING) and counts its calls.
type bpApp struct {
	healthpb.UnimplementedHealthServer
	calls atomic.Int64
	next  healthpb.HealthClient // the service it calls, nil for the last one
}

func (a *bpApp) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	a.calls.Add(1)
	if a.next == nil {
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	}
	in, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for _, k := range bpKeys {
		if v := in.Get(k); len(v) > 0 {
			out.Set(k, v...)
		}
	}
	// The downstream's refusal is returned as it is: the interceptors do the rest.
	return a.next.Check(metadata.NewOutgoingContext(ctx, out), req)
}

// bpLimit limits a call by the descriptor in the incoming metadata key mdKey, with the cost
// in "cost" when withCost; calls without it are not limited.
func bpLimit(mdKey string, withCost bool) client.DescriptorFunc {
	return func(ctx context.Context, _ string, _ any) *ratelimitdv1.CheckRequest {
		md, _ := metadata.FromIncomingContext(ctx)
		v := md.Get(mdKey)
		if len(v) == 0 {
			return nil
		}
		d := &ratelimitdv1.Descriptor{}
		for _, kv := range strings.Split(v[0], "/") {
			k, val, _ := strings.Cut(kv, "=")
			d.Entries = append(d.Entries, &ratelimitdv1.Entry{Key: k, Value: val})
		}
		req := &ratelimitdv1.CheckRequest{Domain: "chain", Descriptors: []*ratelimitdv1.Descriptor{d}}
		if c := md.Get("cost"); withCost && len(c) > 0 {
			req.Cost, _ = strconv.ParseUint(c[0], 10, 64)
		}
		return req
	}
}

// bpServe serves a on a loopback port and returns a client of it, with the dial options.
func bpServe(t *testing.T, a *bpApp, sopts []grpc.ServerOption, dopts ...grpc.DialOption) healthpb.HealthClient {
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

// bpChain is A -> B -> C, three gRPC servers on loopback ports. C is limited by ratelimitd
// (the "c" descriptor); B is limited too (the "b" descriptor) and calls C through the client
// interceptor; A is not limited and calls B through the client interceptor. cSaid is the
// last refusal C's interceptor sent, reachedC counts the calls that reached C's server.
type bpChain struct {
	a, b, c  *bpApp
	reachedC atomic.Int64
	mu       sync.Mutex
	cSaid    *status.Status
	toA      healthpb.HealthClient // the test is A's caller
}

func startChain(t *testing.T, rl *client.Client) *bpChain {
	t.Helper()
	ch := &bpChain{a: &bpApp{}, b: &bpApp{}, c: &bpApp{}}
	outgoing := []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(client.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(client.StreamClientInterceptor()),
	}
	// Outermost on C: count the calls and keep what C answered.
	watchC := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ch.reachedC.Add(1)
		resp, err := handler(ctx, req)
		if err != nil {
			ch.mu.Lock()
			ch.cSaid = status.Convert(err)
			ch.mu.Unlock()
		}
		return resp, err
	}
	ch.b.next = bpServe(t, ch.c, []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(watchC, client.UnaryServerInterceptor(rl, bpLimit("c", true))),
	}, outgoing...)
	ch.a.next = bpServe(t, ch.b, []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl, bpLimit("b", false))),
	}, outgoing...)
	notLimited := func(context.Context, string, any) *ratelimitdv1.CheckRequest { return nil }
	ch.toA = bpServe(t, ch.a, []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl, notLimited)),
	})
	return ch
}

// call calls A with the metadata pairs kv; it returns A's answer as the test sees it.
func (ch *bpChain) call(t *testing.T, kv ...string) bpSeen {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var tr metadata.MD
	_, err := ch.toA.Check(metadata.AppendToOutgoingContext(ctx, kv...), &healthpb.HealthCheckRequest{}, grpc.Trailer(&tr))
	return bpSeenOf(err, tr)
}

// lastC is the RetryInfo delay of C's last refusal (-1 without one).
func (ch *bpChain) lastC() time.Duration {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return bpRetry(ch.cSaid)
}

// bpSeen is what a caller sees of an answer.
type bpSeen struct {
	err      error
	code     codes.Code
	retry    time.Duration // RetryInfo's delay, -1 without one
	pushback string        // "" without the trailer
	subjects []string      // QuotaFailure's
}

func bpSeenOf(err error, tr metadata.MD) bpSeen {
	st := status.Convert(err)
	s := bpSeen{err: err, code: st.Code(), retry: bpRetry(st)}
	if v := tr.Get(client.PushbackKey); len(v) > 0 {
		s.pushback = v[0]
	}
	for _, d := range st.Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok {
			for _, v := range qf.GetViolations() {
				s.subjects = append(s.subjects, v.GetSubject())
			}
		}
	}
	return s
}

func bpRetry(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return -1
}

// pushbackOf is the pushback that goes with a RetryInfo delay.
func pushbackOf(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10)
}

// TestBackPressureChain runs A -> B -> C against the real binary: when C's limit is spent,
// A's caller is refused at once with C's retry-after, and B does not retry C.
func TestBackPressureChain(t *testing.T) {
	s := startService(t, serviceOptions{configDir: "testdata/backpressure"})
	rl := client.New(s.conn, client.Options{Timeout: 2 * time.Second})
	ch := startChain(t, rl)

	// C admits 2 for user u1.
	for i := range 2 {
		if got := ch.call(t, "c", "user=u1"); got.err != nil {
			t.Fatalf("call %d: %v, want admitted", i, got.err)
		}
	}
	// Spent: one call reaches C, none is retried, and A's caller gets C's own advice.
	got := ch.call(t, "c", "user=u1")
	cRetry := ch.lastC()
	if cRetry < 29*time.Minute || cRetry > 30*time.Minute {
		t.Fatalf("C's refusal: RetryInfo %v, want about 30m (the next token)", cRetry)
	}
	if got.code != codes.ResourceExhausted || got.retry != cRetry || got.pushback != pushbackOf(cRetry) {
		t.Errorf("A's caller: %v RetryInfo %v pushback %q; want RESOURCE_EXHAUSTED, C's %v and %q",
			got.code, got.retry, got.pushback, cRetry, pushbackOf(cRetry))
	}
	if len(got.subjects) != 1 || got.subjects[0] != "chain/user=u1" {
		t.Errorf("A's caller: QuotaFailure subjects %q, want [chain/user=u1]", got.subjects)
	}
	if n := ch.reachedC.Load(); n != 3 {
		t.Errorf("%d calls reached C, want 3: B must not retry", n)
	}
	if n := ch.c.calls.Load(); n != 2 {
		t.Errorf("C's handler ran %d times, want 2", n)
	}

	// B's own limit: it admits 2 (C refuses both), then refuses on its own. Its own advice is
	// at most a minute; C's, about 30 minutes, is longer and wins.
	for i := range 2 {
		got := ch.call(t, "b", "bucket=u1", "c", "user=u1")
		if got.code != codes.ResourceExhausted || got.retry != ch.lastC() {
			t.Errorf("B admits %d, C refuses: %v RetryInfo %v, want RESOURCE_EXHAUSTED with C's %v", i, got.code, got.retry, ch.lastC())
		}
	}
	reached := ch.reachedC.Load()
	lastC := ch.lastC()
	got = ch.call(t, "b", "bucket=u1", "c", "user=u1")
	if n := ch.reachedC.Load(); n != reached {
		t.Errorf("B refused on its own, yet %d more calls reached C", n-reached)
	}
	// Asking for B's spent bucket directly is refused and charges nothing.
	own, err := rl.Check(context.Background(), &ratelimitdv1.CheckRequest{Domain: "chain",
		Descriptors: []*ratelimitdv1.Descriptor{{Entries: []*ratelimitdv1.Entry{{Key: "bucket", Value: "u1"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if own.GetAllowed() || own.GetRetryAfter().AsDuration() > time.Minute {
		t.Fatalf("B's own limit: allowed %v, retry-after %v; want refused within a minute", own.GetAllowed(), own.GetRetryAfter().AsDuration())
	}
	// What is left of C's advice is measured on B's clock, so it is compared within a second.
	if got.code != codes.ResourceExhausted || got.retry <= time.Minute || got.retry > lastC+time.Second || got.retry < lastC-10*time.Second ||
		got.pushback != pushbackOf(got.retry) {
		t.Errorf("B refuses on its own: %v RetryInfo %v pushback %q; want RESOURCE_EXHAUSTED with C's remaining %v (not B's %v)",
			got.code, got.retry, got.pushback, lastC, own.GetRetryAfter().AsDuration())
	}
	if len(got.subjects) != 1 || got.subjects[0] != "chain/bucket=u1" {
		t.Errorf("B refuses on its own: QuotaFailure subjects %q, want [chain/bucket=u1]", got.subjects)
	}
}

// TestBackPressureNeverAndShed: a cost that can never fit travels up as pushback -1 without
// RetryInfo, and a shed request as UNAVAILABLE with its retry-after.
func TestBackPressureNeverAndShed(t *testing.T) {
	s := startService(t, serviceOptions{configDir: "testdata/backpressure"})
	rl := client.New(s.conn, client.Options{Timeout: 2 * time.Second})
	ch := startChain(t, rl)

	got := ch.call(t, "c", "bucket=n", "cost", "3")
	if got.code != codes.ResourceExhausted || got.retry != -1 || got.pushback != "-1" {
		t.Errorf("never: %v RetryInfo %v pushback %q; want RESOURCE_EXHAUSTED, no RetryInfo, -1", got.code, got.retry, got.pushback)
	}
	if _, never, ok := client.RetryHint(got.err); !ok || !never {
		t.Errorf("never: RetryHint(error alone) never=%v ok=%v, want never", never, ok)
	}

	if got := ch.call(t, "c", "api=a/priority=default", "cost", "5"); got.err != nil {
		t.Fatalf("the default class's 5 of 10: %v", got.err)
	}
	got = ch.call(t, "c", "api=a/priority=default")
	cRetry := ch.lastC()
	if got.code != codes.Unavailable || cRetry <= 0 || got.retry != cRetry || got.pushback != pushbackOf(cRetry) {
		t.Errorf("shed: %v RetryInfo %v pushback %q; want UNAVAILABLE with C's %v", got.code, got.retry, got.pushback, cRetry)
	}
	if n := ch.reachedC.Load(); n != 3 {
		t.Errorf("%d calls reached C, want 3", n)
	}
}
