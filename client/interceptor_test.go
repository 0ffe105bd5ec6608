package client_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ratelimitd/ratelimitd/client"
)

// refusal is what a caller saw of a refused call.
type refusal struct {
	code     codes.Code
	retry    time.Duration // -1: no RetryInfo
	pushback string
	subjects []string
}

func refusalOf(t *testing.T, err error, tr metadata.MD) refusal {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v is not a status", err)
	}
	r := refusal{code: st.Code(), retry: -1}
	ri, qf, _ := details(st)
	if ri != nil {
		r.retry = ri.GetRetryDelay().AsDuration()
	}
	if v := tr.Get(client.PushbackKey); len(v) > 0 {
		r.pushback = v[0]
	}
	for _, v := range qf.GetViolations() {
		r.subjects = append(r.subjects, v.GetSubject())
	}
	return r
}

func (r refusal) String() string {
	return fmt.Sprintf("%v retry=%v pushback=%q subjects=%q", r.code, r.retry, r.pushback, r.subjects)
}

// counting is an interceptor that counts the calls that reach a server.
func counting(n *atomic.Int64) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		n.Add(1)
		return handler(ctx, req)
	}
}

func TestUnaryServerInterceptor(t *testing.T) {
	rl := startLimiter(t)
	c := &app{}
	h := serveApp(t, c, []grpc.ServerOption{grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl.client, fromMetadata("c")))})
	steps := []struct {
		md   []string
		want *refusal // nil: admitted
	}{
		{md: nil},
		{md: []string{"c", "user=alice"}},
		{md: []string{"c", "user=alice"}},
		{md: []string{"c", "user=alice"}, want: &refusal{codes.ResourceExhausted, 50 * time.Second, "50000", []string{"client/user=alice"}}},
		{md: []string{"c", "bucket=b", "cost", "3"}, want: &refusal{codes.ResourceExhausted, -1, "-1", []string{"client/bucket=b"}}},
		{md: []string{"c", "api=a/priority=default", "cost", "5"}},
		{md: []string{"c", "api=a/priority=default"}, want: &refusal{code: codes.Unavailable, subjects: []string{"client/api=a/priority=default"}}},
	}
	admitted := int64(0)
	for i, s := range steps {
		tr, err := call(h, s.md...)
		switch {
		case s.want == nil && err != nil:
			t.Errorf("step %d %q: %v, want admitted", i, s.md, err)
		case s.want == nil:
			admitted++
		case err == nil:
			t.Errorf("step %d %q: admitted, want %v", i, s.md, s.want)
		default:
			got := refusalOf(t, err, tr)
			if s.want.code == codes.Unavailable {
				// A shed waits for the oldest sub-window of the hour to leave.
				if got.retry <= 0 || got.pushback != strconv.FormatInt(got.retry.Milliseconds(), 10) {
					t.Errorf("step %d %q: %v, want a RetryInfo and the same pushback", i, s.md, got)
				}
				got.retry, got.pushback = 0, ""
			}
			if got.String() != s.want.String() {
				t.Errorf("step %d %q: %v, want %v", i, s.md, got, s.want)
			}
		}
	}
	if n := c.calls.Load(); n != admitted {
		t.Errorf("handler ran %d times, want %d", n, admitted)
	}
}

func TestServerInterceptorFailureMode(t *testing.T) {
	dead := deadLimiter(t)
	var errs atomic.Int64
	onError := client.OnError(func(context.Context, error) { errs.Add(1) })
	open, closed := &app{}, &app{}
	ho := serveApp(t, open, []grpc.ServerOption{grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(dead, fromMetadata("c"), onError))})
	hc := serveApp(t, closed, []grpc.ServerOption{grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(dead, fromMetadata("c"), onError, client.FailClosed()))})
	if _, err := call(ho, "c", "user=alice"); err != nil {
		t.Errorf("fail open: %v, want admitted", err)
	}
	tr, err := call(hc, "c", "user=alice")
	if got := refusalOf(t, err, tr); got.String() != (refusal{code: codes.Unavailable, retry: -1}).String() {
		t.Errorf("fail closed: %v, want UNAVAILABLE without a retry hint", got)
	}
	if open.calls.Load() != 1 || closed.calls.Load() != 0 || errs.Load() != 2 {
		t.Errorf("handler calls open %d, closed %d, OnError %d; want 1, 0, 2", open.calls.Load(), closed.calls.Load(), errs.Load())
	}
}

// chain is B -> C: C guarded by the "c" descriptor, B by the "b" descriptor, calling C
// through the client interceptor. B's handler returns C's error as it is, or, with the
// metadata wrap=1, replaced by an INTERNAL error (the hint then comes from the context).
type chain struct {
	b, c     *app
	reachedC atomic.Int64
	bClient  healthpb.HealthClient // no interceptor: the test is B's caller
	cClient  healthpb.HealthClient // with the client interceptors, as B calls C
}

func newChain(t *testing.T, rl *limiter, bOpts ...client.Option) *chain {
	t.Helper()
	ch := &chain{b: &app{}, c: &app{}}
	ch.cClient = serveApp(t, ch.c, []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(counting(&ch.reachedC), client.UnaryServerInterceptor(rl.client, fromMetadata("c"))),
		grpc.ChainStreamInterceptor(client.StreamServerInterceptor(rl.client, fromMetadata("c"))),
	},
		grpc.WithChainUnaryInterceptor(client.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(client.StreamClientInterceptor()))
	ch.b.next = func(ctx context.Context) error {
		md, _ := metadata.FromIncomingContext(ctx)
		var err error
		if first(md, "stream") == "1" {
			var s grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
			if s, err = ch.cClient.Watch(forward(ctx), &healthpb.HealthCheckRequest{}); err == nil {
				_, err = s.Recv()
			}
		} else {
			_, err = ch.cClient.Check(forward(ctx), &healthpb.HealthCheckRequest{})
		}
		if err != nil && first(md, "wrap") == "1" {
			return status.Errorf(codes.Internal, "ask C: %v", status.Convert(err).Message())
		}
		if err != nil && first(md, "wrap") == "bad" {
			return status.Error(codes.InvalidArgument, "the request itself is wrong")
		}
		return err
	}
	ch.bClient = serveApp(t, ch.b, []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl.client, fromMetadata("b"), bOpts...)),
		grpc.ChainStreamInterceptor(client.StreamServerInterceptor(rl.client, fromMetadata("b"), bOpts...)),
	})
	return ch
}

func TestChainPassesBackPressureUpstream(t *testing.T) {
	rl := startLimiter(t)
	ch := newChain(t, rl)
	c50 := refusal{codes.ResourceExhausted, 50 * time.Second, "50000", []string{"client/user=u1"}}
	steps := []struct {
		name     string
		md       []string
		want     *refusal
		reachedC int64 // calls that reached C so far
	}{
		{name: "C admits", md: []string{"c", "user=u1"}, reachedC: 1},
		{name: "C admits", md: []string{"c", "user=u1"}, reachedC: 2},
		{name: "C spent: B passes C's hint on, once", md: []string{"c", "user=u1"}, want: &c50, reachedC: 3},
		{name: "handler replaced the error", md: []string{"c", "user=u1", "wrap", "1"}, want: &c50, reachedC: 4},
		// B's own bucket (1 a second, burst 2) admits twice; C refuses both.
		{name: "B admits, C refuses", md: []string{"b", "bucket=u1", "c", "user=u1"}, want: &c50, reachedC: 5},
		{name: "B admits, C refuses", md: []string{"b", "bucket=u1", "c", "user=u1"}, want: &c50, reachedC: 6},
		// B refuses on its own (1s), and what C asked for (50s, on the set clock) is longer.
		{name: "B refuses: the longer wins", md: []string{"b", "bucket=u1", "c", "user=u1"},
			want: &refusal{codes.ResourceExhausted, 50 * time.Second, "50000", []string{"client/bucket=u1"}}, reachedC: 6},
		{name: "never", md: []string{"c", "bucket=n", "cost", "3"}, want: &refusal{codes.ResourceExhausted, -1, "-1", []string{"client/bucket=n"}}, reachedC: 7},
		{name: "the handler's own answer stands", md: []string{"c", "user=u1", "wrap", "bad"}, want: &refusal{codes.InvalidArgument, -1, "", nil}, reachedC: 8},
		{name: "stream", md: []string{"stream", "1", "c", "user=u1"}, want: &c50, reachedC: 8},
		{name: "stream, replaced error", md: []string{"stream", "1", "c", "user=u1", "wrap", "1"}, want: &c50, reachedC: 8},
	}
	for i, s := range steps {
		tr, err := call(ch.bClient, s.md...)
		switch {
		case s.want == nil && err != nil:
			t.Errorf("step %d (%s): %v, want admitted", i, s.name, err)
		case s.want != nil && err == nil:
			t.Errorf("step %d (%s): admitted, want %v", i, s.name, s.want)
		case s.want != nil:
			if got := refusalOf(t, err, tr); got.String() != s.want.String() {
				t.Errorf("step %d (%s): %v, want %v", i, s.name, got, s.want)
			}
		}
		if got := ch.reachedC.Load(); got != s.reachedC {
			t.Errorf("step %d (%s): %d unary calls reached C, want %d (B must not retry)", i, s.name, got, s.reachedC)
		}
	}
	if got := ch.c.calls.Load(); got != 2 {
		t.Errorf("C's handler ran %d times, want 2", got)
	}
}

func TestChainShedStaysUnavailable(t *testing.T) {
	rl := startLimiter(t)
	ch := newChain(t, rl)
	if _, err := call(ch.bClient, "c", "api=a/priority=default", "cost", "5"); err != nil {
		t.Fatalf("the default class's 5: %v", err)
	}
	tr, err := call(ch.bClient, "c", "api=a/priority=default")
	got := refusalOf(t, err, tr)
	if got.code != codes.Unavailable || got.retry <= 0 || got.pushback != strconv.FormatInt(got.retry.Milliseconds(), 10) {
		t.Errorf("shed by C, seen through B: %v, want UNAVAILABLE with RetryInfo and pushback", got)
	}
}

func TestOwnRefusalWithoutMemory(t *testing.T) {
	rl := startLimiter(t)
	ch := newChain(t, rl, client.DownstreamMemory(0))
	for range 2 {
		call(ch.bClient, "c", "user=u1")
	}
	for range 2 {
		if _, err := call(ch.bClient, "b", "bucket=u1", "c", "user=u1"); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("C spent: %v, want RESOURCE_EXHAUSTED", err)
		}
	}
	tr, err := call(ch.bClient, "b", "bucket=u1", "c", "user=u1")
	want := refusal{codes.ResourceExhausted, time.Second, "1000", []string{"client/bucket=u1"}}
	if got := refusalOf(t, err, tr); got.String() != want.String() {
		t.Errorf("B's own refusal, no memory: %v, want %v", got, want)
	}
}

func TestHTTPHandlerSeesDownstreamHint(t *testing.T) {
	rl := startLimiter(t)
	ch := newChain(t, rl)
	h := client.HTTPMiddleware(rl.client, fromQuery)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := metadata.AppendToOutgoingContext(r.Context(), "c", "user=web")
		if _, err := ch.cClient.Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
			io.WriteString(w, "ok")
			return
		}
		// The client interceptor recorded C's hint in the request's context.
		if delay, never, ok := client.DownstreamHint(r.Context()); ok && !never {
			w.Header().Set("Retry-After", strconv.FormatInt(int64((delay+time.Second-1)/time.Second), 10))
			http.Error(w, "busy", http.StatusTooManyRequests)
			return
		}
		http.Error(w, "C failed", http.StatusBadGateway)
	}))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	for i, want := range []int{200, 200, 429} {
		resp := get(t, srv.URL)
		if resp.StatusCode != want {
			t.Errorf("request %d: status %d, want %d", i, resp.StatusCode, want)
		}
		if want == 429 && resp.Header.Get("Retry-After") != "50" {
			t.Errorf("request %d: Retry-After %q, want 50", i, resp.Header.Get("Retry-After"))
		}
	}
}

func TestDownstreamHintInContext(t *testing.T) {
	rl := startLimiter(t)
	ch := newChain(t, rl)
	for range 2 {
		if _, err := call(ch.cClient, "c", "user=ctx"); err != nil {
			t.Fatal(err)
		}
	}
	// A handler behind the server interceptor calls the spent C through the client
	// interceptor and serves anyway (from a cache, say): its answer stands, and it can read
	// the hint.
	type seen struct {
		delay time.Duration
		ok    bool
	}
	var got atomic.Pointer[seen]
	d := &app{next: func(ctx context.Context) error {
		_, err := ch.cClient.Check(forward(ctx), &healthpb.HealthCheckRequest{})
		if err == nil {
			return fmt.Errorf("C admitted a spent limit")
		}
		delay, _, ok := client.DownstreamHint(ctx)
		got.Store(&seen{delay, ok})
		return nil
	}}
	dClient := serveApp(t, d, []grpc.ServerOption{grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl.client, fromMetadata("d")))})
	if _, err := call(dClient, "c", "user=ctx"); err != nil {
		t.Errorf("D served from a cache: %v, want admitted", err)
	}
	if s := got.Load(); s == nil || !s.ok || s.delay != 50*time.Second {
		t.Errorf("DownstreamHint = %+v, want 50s", s)
	}
}
