package server

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/testclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is a Server on the memory store with a set clock, reached over gRPC on bufconn.
type harness struct {
	clock  *testclock.Clock
	srv    *Server
	client rlsv3.RateLimitServiceClient
	native ratelimitdv1.RateLimiterClient
}

const testConfig = `
domain: d
descriptors:
  - key: fw
    rate_limit: {unit: minute, requests_per_unit: 4, name: four}
  - key: one
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: tb
    rate_limit: {unit: second, requests_per_unit: 2, algorithm: token_bucket, burst: 2}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: counted
    rate_limit: {unit: minute, requests_per_unit: 1, count_rejected: true}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 100, replaces: [{name: small}]}
  - key: small
    rate_limit: {unit: minute, requests_per_unit: 1, name: small}
  - key: open
    rate_limit: {unlimited: true}
`

func newHarness(t testing.TB, opts Options) *harness {
	t.Helper()
	return newHarnessConfig(t, opts, testConfig)
}

// newHarnessConfig is newHarness serving the YAML document cfg (domain d).
func newHarnessConfig(t testing.TB, opts Options, cfg string) *harness {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "d.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	// 10s into a minute, on a whole second.
	c := testclock.New(time.Unix(1_800_000_000, 0).Truncate(time.Minute).Add(10 * time.Second))
	opts.Decider = algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{Now: c.Now}))
	srv := New(opts)
	srv.SetRules(set)

	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		g.Stop()
	})
	return &harness{clock: c, srv: srv, client: rlsv3.NewRateLimitServiceClient(conn), native: ratelimitdv1.NewRateLimiterClient(conn)}
}

func (h *harness) call(t *testing.T, ds ...*ratelimitv3.RateLimitDescriptor) *rlsv3.RateLimitResponse {
	t.Helper()
	resp, err := h.client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "d", Descriptors: ds})
	if err != nil {
		t.Fatalf("ShouldRateLimit: %v", err)
	}
	return resp
}

func d(key, value string) *ratelimitv3.RateLimitDescriptor {
	return &ratelimitv3.RateLimitDescriptor{Entries: entries(key, value)}
}

func withHits(desc *ratelimitv3.RateLimitDescriptor, n uint64) *ratelimitv3.RateLimitDescriptor {
	desc.HitsAddend = wrapperspb.UInt64(n)
	return desc
}

func headers(hs []*corev3.HeaderValue) map[string]string {
	m := make(map[string]string)
	for _, h := range hs {
		m[h.GetKey()] = h.GetValue()
	}
	return m
}

// TestHeadersOnAFixedClock checks every header value exactly: the clock is 10s into a minute,
// so a fixed window resets in 50s.
func TestHeadersOnAFixedClock(t *testing.T) {
	h := newHarness(t, Options{Headers: HeaderOptions{XRateLimit: true}})
	steps := []struct {
		want map[string]string
		req  map[string]string // request headers
	}{
		{want: map[string]string{"RateLimit-Policy": `"four";q=4;w=60`, "RateLimit": `"four";r=3;t=50`,
			"X-RateLimit-Limit": "4", "X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "50"}},
		{want: map[string]string{"RateLimit": `"four";r=2;t=50`}},
		{want: map[string]string{"RateLimit": `"four";r=1;t=50`}}, // 3 of 4 is below 0.8

		{want: map[string]string{"RateLimit": `"four";r=0;t=50`}, req: map[string]string{"x-ratelimit-grade": "near-limit"}},
		{want: map[string]string{"RateLimit": `"four";r=0;t=50`, "Retry-After": "50"}},
	}
	for i, st := range steps {
		resp := h.call(t, d("fw", "x"))
		got := headers(resp.GetResponseHeadersToAdd())
		for k, v := range st.want {
			if got[k] != v {
				t.Errorf("step %d: %s = %q, want %q", i, k, got[k], v)
			}
		}
		if _, ok := got["Retry-After"]; ok && st.want["Retry-After"] == "" {
			t.Errorf("step %d: Retry-After %q on an admitted request", i, got["Retry-After"])
		}
		if gotReq := headers(resp.GetRequestHeadersToAdd()); len(gotReq) != len(st.req) || gotReq["x-ratelimit-grade"] != st.req["x-ratelimit-grade"] {
			t.Errorf("step %d: request headers %v, want %v", i, gotReq, st.req)
		}
	}
	// 0.5s later the window still has 49.5s to go: Retry-After rounds up to 50.
	h.clock.Add(500 * time.Millisecond)
	if got := headers(h.call(t, d("fw", "x")).GetResponseHeadersToAdd())["Retry-After"]; got != "50" {
		t.Errorf("Retry-After at 49.5s to go = %q, want 50", got)
	}
	// In the next window the counter starts again.
	h.clock.Add(50 * time.Second)
	if got := headers(h.call(t, d("fw", "x")).GetResponseHeadersToAdd())["RateLimit"]; got != `"four";r=3;t=60` {
		t.Errorf("RateLimit in the next window = %q, want r=3;t=60", got)
	}
}

func TestTokenBucketRetryAfterAndNever(t *testing.T) {
	h := newHarness(t, Options{})
	first := headers(h.call(t, withHits(d("tb", "x"), 2)).GetResponseHeadersToAdd())
	if got, want := first["RateLimit-Policy"], `"d/tb";q=2;w=1`; got != want {
		t.Errorf("RateLimit-Policy = %q, want %q (burst 2, refilled in 1s)", got, want)
	}
	resp := h.call(t, d("tb", "x"))
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("empty bucket: %v, want OVER_LIMIT", resp.GetOverallCode())
	}
	// Two tokens a second: the next one is 500ms away, rounded up to 1s.
	if got := headers(resp.GetResponseHeadersToAdd())["Retry-After"]; got != "1" {
		t.Errorf("Retry-After = %q, want 1", got)
	}
	if got := resp.GetDynamicMetadata().AsMap()["descriptors"].([]any)[0].(map[string]any)["retry_after_ms"]; got != 500.0 {
		t.Errorf("retry_after_ms = %v, want 500", got)
	}
	h.clock.Add(500 * time.Millisecond)
	if resp := h.call(t, d("tb", "x")); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("after the retry-after: %v, want OK", resp.GetOverallCode())
	}
	resp = h.call(t, withHits(d("tb", "y"), 3))
	if g := resp.GetDynamicMetadata().AsMap()["grade"]; g != "never" {
		t.Errorf("cost 3 over burst 2: grade %v, want never", g)
	}
	if _, ok := headers(resp.GetResponseHeadersToAdd())["Retry-After"]; ok {
		t.Errorf("Retry-After on a request that can never pass")
	}
}

// TestAllOrNothing: a refusal refunds the other descriptors, except count_rejected ones, and a
// shadow-mode refusal refunds nothing.
func TestAllOrNothing(t *testing.T) {
	h := newHarness(t, Options{})
	h.call(t, d("one", "a"))
	resp := h.call(t, d("fw", "a"), d("one", "a"), d("tb", "a"))
	if got := resp.GetOverallCode(); got != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("overall %v, want OVER_LIMIT", got)
	}
	st := resp.GetStatuses()
	if st[0].GetCode() != rlsv3.RateLimitResponse_OK || st[0].GetLimitRemaining() != 4 {
		t.Errorf("fw status %v, want OK with 4 remaining after its refund", st[0])
	}
	if got := h.call(t, d("fw", "a")).GetStatuses()[0].GetLimitRemaining(); got != 3 {
		t.Errorf("fw after the refused request: remaining %d, want 3", got)
	}
	if got := h.call(t, d("tb", "a")).GetStatuses()[0].GetLimitRemaining(); got != 1 {
		t.Errorf("tb after the refused request: remaining %d, want 1", got)
	}

	// count_rejected: a descriptor admitted beside a refusal stays charged...
	h.call(t, d("one", "c"))
	resp = h.call(t, d("counted", "c"), d("one", "c"))
	if st := resp.GetStatuses(); st[0].GetCode() != rlsv3.RateLimitResponse_OK || st[1].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("counted beside an exhausted limit: %v, want OK then OVER_LIMIT", st)
	}
	if got := h.call(t, d("counted", "c")).GetStatuses()[0].GetCode(); got != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("counted after its admission beside a refusal: %v, want OVER_LIMIT (not refunded)", got)
	}
	// ...and its refused hits are counted: after one admitted and one refused hit, refunding
	// one still leaves the limit of 1 spent.
	refund := withHits(d("counted", "r"), 1)
	refund.IsNegativeHits = true
	h.call(t, d("counted", "r"))
	h.call(t, d("counted", "r"))
	h.call(t, refund)
	if got := h.call(t, d("counted", "r")).GetStatuses()[0].GetCode(); got != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("counted after 1 admitted, 1 refused and 1 refunded hit: %v, want OVER_LIMIT", got)
	}
	// Without count_rejected the same sequence leaves room again.
	refund = withHits(d("one", "r"), 1)
	refund.IsNegativeHits = true
	h.call(t, d("one", "r"))
	h.call(t, d("one", "r"))
	h.call(t, refund)
	if got := h.call(t, d("one", "r")).GetStatuses()[0].GetCode(); got != rlsv3.RateLimitResponse_OK {
		t.Errorf("one after 1 admitted, 1 refused and 1 refunded hit: %v, want OK", got)
	}

	// Shadow mode: reported OK with the numbers, and the others are not refunded.
	h.call(t, d("shadow", "s"))
	resp = h.call(t, d("shadow", "s"), d("fw", "s"))
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit() != 1 {
		t.Errorf("shadow refusal: %v, want overall OK with the limit reported", resp)
	}
	if m := resp.GetDynamicMetadata().AsMap(); m["shadow"] != true {
		t.Errorf("metadata %v, want shadow flagged", m)
	}
	if got := h.call(t, d("fw", "s")).GetStatuses()[0].GetLimitRemaining(); got != 2 {
		t.Errorf("fw beside a shadow refusal: remaining %d, want 2 (charged, not refunded)", got)
	}
}

func TestReplacesUnlimitedAndUnmatched(t *testing.T) {
	h := newHarness(t, Options{})
	resp := h.call(t, d("big", "x"), d("small", "x"), d("open", "x"), d("nomatch", "x"))
	st := resp.GetStatuses()
	if st[0].GetCurrentLimit().GetRequestsPerUnit() != 100 {
		t.Errorf("big: %v, want limited at 100", st[0])
	}
	if st[1].GetCurrentLimit() != nil || st[1].GetCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("small (replaced): %v, want OK with no limit", st[1])
	}
	if st[2].GetLimitRemaining() != 4294967295 || st[2].GetCurrentLimit() != nil {
		t.Errorf("open (unlimited): %v, want remaining 4294967295 and no limit", st[2])
	}
	if st[3].GetCurrentLimit() != nil || st[3].GetLimitRemaining() != 0 {
		t.Errorf("nomatch: %v, want OK with nothing", st[3])
	}
	// small was not charged: alone it has its whole limit of 1.
	if resp := h.call(t, d("small", "x")); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("small alone: %v, want OK", resp.GetOverallCode())
	}
}

func TestNoRulesIsUnavailable(t *testing.T) {
	srv := New(Options{Decider: algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{}))})
	_, err := srv.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "d", Descriptors: []*ratelimitv3.RateLimitDescriptor{d("k", "v")}})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("before SetRules: %v, want UNAVAILABLE", err)
	}
	if err := srv.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "configuration") {
		t.Errorf("Ready before SetRules = %v, want an error about the configuration", err)
	}
}

// TestOverrideOutOfRange: an override the algorithm cannot decide exactly is bad input, not a
// storage error, and charges nothing.
func TestOverrideOutOfRange(t *testing.T) {
	h := newHarness(t, Options{})
	zero := d("tb", "z")
	zero.Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 0, Unit: typev3.RateLimitUnit_SECOND}
	_, err := h.client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "d", Descriptors: []*ratelimitv3.RateLimitDescriptor{d("fw", "z"), zero}})
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "descriptors[1].limit: ") {
		t.Fatalf("token bucket override with rate 0: %v, want InvalidArgument about descriptors[1].limit", err)
	}
	if got := h.call(t, d("fw", "z")).GetStatuses()[0].GetLimitRemaining(); got != 3 {
		t.Errorf("fw after the refused request: remaining %d, want 3 (nothing charged)", got)
	}
}

// TestShadowLimitsStayOutOfHeaders: clients are not told about limits that are not enforced.
func TestShadowLimitsStayOutOfHeaders(t *testing.T) {
	h := newHarness(t, Options{Headers: HeaderOptions{XRateLimit: true}})
	h.call(t, d("shadow", "h"))
	got := headers(h.call(t, d("shadow", "h"), d("tb", "h")).GetResponseHeadersToAdd())
	if want := `"d/tb";q=2;w=1`; got["RateLimit-Policy"] != want {
		t.Errorf("RateLimit-Policy = %q, want only the enforced token bucket %q", got["RateLimit-Policy"], want)
	}
	if got["X-RateLimit-Limit"] != "2" || got["X-RateLimit-Remaining"] != "1" {
		t.Errorf("X-RateLimit-Limit/Remaining = %q/%q, want the bucket's 2/1", got["X-RateLimit-Limit"], got["X-RateLimit-Remaining"])
	}
	if got := headers(h.call(t, d("shadow", "h")).GetResponseHeadersToAdd()); len(got) != 0 {
		t.Errorf("headers for a shadow limit alone: %v, want none", got)
	}
}

// slowDecider answers like the store it wraps, after a delay.
type slowDecider struct {
	next  algorithms.Decider
	delay time.Duration
}

func (d slowDecider) Decide(ctx context.Context, reqs []algorithms.Request) ([]algorithms.Result, error) {
	time.Sleep(d.delay)
	return d.next.Decide(ctx, reqs)
}

// TestNoRefundIntoTheNextWindow: when a fixed window may have ended between the charge and
// the refund, the refund is skipped (it would free hits in the next window).
func TestNoRefundIntoTheNextWindow(t *testing.T) {
	h := newHarness(t, Options{})
	h.srv.decider = slowDecider{next: h.srv.decider, delay: 5 * time.Millisecond}
	h.call(t, d("one", "w"))
	// 2ms before the window ends: the charge's round trip (5ms) outlasts what is left.
	h.clock.Add(50*time.Second - 2*time.Millisecond)
	resp := h.call(t, d("fw", "w"), d("one", "w"))
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("overall %v, want OVER_LIMIT", resp.GetOverallCode())
	}
	if got := h.call(t, d("fw", "w")).GetStatuses()[0].GetLimitRemaining(); got != 2 {
		t.Errorf("fw after a refused request at the window's end: remaining %d, want 2 (not refunded)", got)
	}
}

// shardDown decides like the store it wraps, except that requests whose key contains down
// fail, as on a shard that stopped answering.
type shardDown struct{ next algorithms.Decider }

func (d shardDown) Decide(ctx context.Context, reqs []algorithms.Request) ([]algorithms.Result, error) {
	failed := make([]error, len(reqs))
	var up []algorithms.Request
	var idx []int
	for i, r := range reqs {
		if strings.Contains(r.Key, "down") {
			failed[i] = errors.New("dial tcp: connection refused")
			continue
		}
		up, idx = append(up, r), append(idx, i)
	}
	out, err := d.next.Decide(ctx, up)
	if err != nil {
		return nil, err
	}
	results := make([]algorithms.Result, len(reqs))
	for k, i := range idx {
		results[i] = out[k]
	}
	if len(idx) == len(reqs) {
		return results, nil
	}
	return results, &algorithms.PartialError{Failed: failed}
}

// TestOneShardDownRefundsTheOthers: when a request's descriptors span a shard that answers and
// one that fails, and the failure mode refuses the request, the answering shard's charge is
// given back.
func TestOneShardDownRefundsTheOthers(t *testing.T) {
	h := newHarness(t, Options{})
	h.srv.decider = shardDown{next: h.srv.decider}
	_, err := h.client.ShouldRateLimit(context.Background(), &rlsv3.RateLimitRequest{Domain: "d",
		Descriptors: []*ratelimitv3.RateLimitDescriptor{d("fw", "up"), d("one", "down")}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("one descriptor on a failed shard: %v, want UNAVAILABLE", err)
	}
	if got := h.call(t, d("fw", "up")).GetStatuses()[0].GetLimitRemaining(); got != 3 {
		t.Errorf("fw after the failed request: remaining %d, want 3 (its charge refunded)", got)
	}
}

// TestShadowNeverGradesTheRequest: a shadow limit near its end neither grades the request nor
// tells the upstream to degrade.
func TestShadowNeverGradesTheRequest(t *testing.T) {
	h := newHarness(t, Options{})
	resp := h.call(t, d("shadow", "g"))
	if g := resp.GetDynamicMetadata().AsMap()["grade"]; g != "ok" || len(resp.GetRequestHeadersToAdd()) != 0 {
		t.Errorf("first hit of a shadow limit of 1: grade %v, request headers %v; want ok and none", g, resp.GetRequestHeadersToAdd())
	}
	native, err := h.native.Check(context.Background(), &ratelimitdv1.CheckRequest{Domain: "d", Descriptors: []*ratelimitdv1.Descriptor{nd("shadow", "g")}})
	if err != nil || native.GetGrade() != ratelimitdv1.Grade_GRADE_OK || !native.GetAllowed() {
		t.Errorf("native check of a spent shadow limit: %v, %v; want allowed, GRADE_OK", native, err)
	}
}
