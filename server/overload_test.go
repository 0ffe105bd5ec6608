package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// fill admits n default-priority requests, failing the test if one is refused.
func fill(t *testing.T, l *overload, n int) {
	t.Helper()
	for i := range n {
		if !l.acquire(false) {
			t.Fatalf("request %d of %d refused with limit %d", i+1, n, l.Limit())
		}
	}
}

// TestOverloadLimitMoves: with latency at its observed minimum and the limit in use, the limit
// grows; when latency climbs beyond the tolerance, it shrinks; it stays within its bounds.
func TestOverloadLimitMoves(t *testing.T) {
	l := newOverload(OverloadOptions{InitialLimit: 20, MinLimit: 5, MaxLimit: 40}, nil)
	const base = time.Millisecond

	// Busy and fast: grows, one sample at a time, up to the maximum.
	prev := l.Limit()
	for range 200 {
		fill(t, l, l.Limit())
		for range l.InFlight() {
			l.release(base)
		}
		if got := l.Limit(); got < prev {
			t.Fatalf("limit fell from %d to %d at minimum latency", prev, got)
		}
		prev = l.Limit()
	}
	if got := l.Limit(); got != 40 {
		t.Fatalf("after fast busy traffic the limit is %d, want the maximum 40", got)
	}

	// Latency within the tolerance (2x the minimum): no shrinking.
	fill(t, l, 30)
	for range 30 {
		l.release(2 * base)
	}
	if got := l.Limit(); got != 40 {
		t.Errorf("at 2x the minimum latency the limit is %d, want it kept at 40", got)
	}

	// Latency 10x the minimum: shrinks down to the minimum.
	prev = l.Limit()
	for range 100 {
		fill(t, l, 1)
		l.release(10 * base)
		if got := l.Limit(); got > prev {
			t.Fatalf("limit rose from %d to %d while latency climbed", prev, got)
		}
		prev = l.Limit()
	}
	if got := l.Limit(); got != 5 {
		t.Errorf("after slow traffic the limit is %d, want the minimum 5", got)
	}

	// Back to fast, but idle (one request at a time): the limit does not inflate.
	for range 100 {
		fill(t, l, 1)
		l.release(base)
	}
	if got := l.Limit(); got != 5 {
		t.Errorf("after fast idle traffic the limit is %d, want it kept at 5", got)
	}
}

// TestOverloadShedsLowPriorityFirst: low-priority requests are refused once half the limit is
// in flight, the others only at the limit.
func TestOverloadShedsLowPriorityFirst(t *testing.T) {
	l := newOverload(OverloadOptions{MinLimit: 8, MaxLimit: 8}, nil)
	var lowOK, defaultOK int
	// Interleave low and default arrivals while nothing completes.
	// Low ones are refused from 4 in flight, default ones from 8.
	for range 10 {
		if l.acquire(true) {
			lowOK++
		}
		if l.acquire(false) {
			defaultOK++
		}
	}
	// Low ones pass while fewer than 4 (half of 8) are in flight: at 0 and 2.
	if lowOK != 2 || defaultOK != 6 {
		t.Fatalf("admitted %d low and %d default, want 2 low (below half of 8) and 6 default (the rest up to 8)", lowOK, defaultOK)
	}
	if l.acquire(false) {
		t.Error("a default request beyond the limit was admitted")
	}
	l.release(time.Millisecond)
	if l.acquire(true) {
		t.Error("a low request admitted with 7 of 8 in flight, want refused (threshold 4)")
	}
	if !l.acquire(false) {
		t.Error("a default request refused with 7 of 8 in flight")
	}
}

// TestOverloadInterceptor: beyond the limit the interceptor answers RESOURCE_EXHAUSTED with
// RetryInfo, reads the native priority, and leaves other services and Release alone.
func TestOverloadInterceptor(t *testing.T) {
	now := time.Unix(1000, 0)
	srv := New(Options{Decider: failingStore{}, Overload: OverloadOptions{
		MinLimit: 2, MaxLimit: 2, LowPriorities: []string{"sheddable"}, RetryAfter: 250 * time.Millisecond,
		Now: func() time.Time { return now },
	}})
	icpt := srv.UnaryInterceptor()
	check := &grpc.UnaryServerInfo{FullMethod: "/ratelimitd.v1.RateLimiter/Check"}
	envoy := &grpc.UnaryServerInfo{FullMethod: "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"}
	ctx := context.Background()

	// A handler that stays in flight until released.
	release := make(chan struct{})
	entered := make(chan struct{})
	block := func(context.Context, any) (any, error) {
		entered <- struct{}{}
		<-release
		return "ok", nil
	}
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := icpt(ctx, &ratelimitdv1.CheckRequest{}, envoy, block)
			done <- err
		}()
		<-entered
	}
	quick := func(context.Context, any) (any, error) { return "ok", nil }
	_, err := icpt(ctx, &ratelimitdv1.CheckRequest{Priority: "critical"}, check, quick)
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("beyond the limit: %v, want RESOURCE_EXHAUSTED", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() != 250*time.Millisecond {
		t.Errorf("details %v, want RetryInfo of 250ms", st.Details())
	}
	for _, m := range []string{"/ratelimitd.v1.RateLimiter/Release", "/grpc.health.v1.Health/Check"} {
		if _, err := icpt(ctx, nil, &grpc.UnaryServerInfo{FullMethod: m}, quick); err != nil {
			t.Errorf("%s at the limit: %v, want it let through", m, err)
		}
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("admitted request: %v", err)
		}
	}
	// With one in flight, a sheddable request is refused (threshold 1), a critical one not.
	go func() {
		_, err := icpt(ctx, &ratelimitdv1.CheckRequest{}, check, func(context.Context, any) (any, error) {
			entered <- struct{}{}
			<-done
			return "ok", nil
		})
		done <- err
	}()
	<-entered
	if _, err := icpt(ctx, &ratelimitdv1.CheckRequest{Priority: "sheddable"}, check, quick); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("sheddable with 1 of 2 in flight: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := icpt(ctx, &ratelimitdv1.CheckRequest{Priority: "critical"}, check, quick); err != nil {
		t.Errorf("critical with 1 of 2 in flight: %v, want admitted", err)
	}
	done <- nil
	if err := <-done; err != nil {
		t.Error(err)
	}
}
