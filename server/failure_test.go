package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/testclock"
)

// failingStore fails every batch, as a dead Redis does.
type failingStore struct{}

func (failingStore) Decide(context.Context, []algorithms.Request) ([]algorithms.Result, error) {
	return nil, errors.New("dial tcp 10.0.0.1:6379: connection refused")
}

const failureConfig = `
domain: d
descriptors:
  - key: error
    rate_limit: {unit: minute, requests_per_unit: 4}
  - key: allow
    rate_limit: {unit: minute, requests_per_unit: 4, failure_mode: allow}
  - key: deny
    rate_limit: {unit: minute, requests_per_unit: 4, failure_mode: deny}
  - key: local
    rate_limit: {unit: minute, requests_per_unit: 4, failure_mode: local}
  - key: open
    rate_limit: {unlimited: true, failure_mode: deny}
`

func newFailingServer(t *testing.T, reg prometheus.Registerer) *Server {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "d.yaml"), []byte(failureConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := testclock.New(time.Unix(1_800_000_000, 0).Truncate(time.Minute).Add(10 * time.Second))
	srv := New(Options{
		Decider:    failingStore{},
		Local:      algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{Now: c.Now})),
		Replicas:   2,
		Registerer: reg,
	})
	srv.SetRules(set)
	return srv
}

// TestFailureModes: with the store down, each rule answers as its failure_mode says, flagged
// degraded in metadata, in the native answer and in the metric.
func TestFailureModes(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := newFailingServer(t, reg)
	ctx := context.Background()
	call := func(ds ...*ratelimitv3.RateLimitDescriptor) (*rlsv3.RateLimitResponse, error) {
		return srv.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "d", Descriptors: ds})
	}

	if _, err := call(d("error", "x")); status.Code(err) != codes.Unavailable {
		t.Errorf("failure_mode error: %v, want UNAVAILABLE", err)
	}
	if _, err := call(d("allow", "x"), d("error", "x")); status.Code(err) != codes.Unavailable {
		t.Errorf("allow and error together: %v, want UNAVAILABLE (error wins)", err)
	}

	resp, err := call(d("allow", "x"), d("open", "x"))
	if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("failure_mode allow: %v %v, want OK", resp.GetOverallCode(), err)
	}
	if m := meta(resp, 0); m["degraded"] != true || m["grade"] != "ok" || m["failure_mode"] != "allow" {
		t.Errorf("allow metadata %v, want degraded ok", m)
	}
	if m := meta(resp, 1); m["degraded"] != nil {
		t.Errorf("unlimited descriptor metadata %v, want not degraded", m)
	}
	if top := resp.GetDynamicMetadata().AsMap(); top["degraded"] != true {
		t.Errorf("top-level metadata %v, want degraded", top)
	}

	resp, err = call(d("deny", "x"))
	if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("failure_mode deny: %v %v, want OVER_LIMIT", resp.GetOverallCode(), err)
	}
	if got := headers(resp.GetResponseHeadersToAdd())["Retry-After"]; got != "1" {
		t.Errorf("deny Retry-After %q, want 1 (DegradedRetryAfter)", got)
	}
	if m := meta(resp, 0); m["degraded"] != true || m["grade"] != "over_limit" {
		t.Errorf("deny metadata %v, want degraded over_limit", m)
	}

	// local: 4 per minute over 2 replicas is 2 per minute in this process.
	var codes []rlsv3.RateLimitResponse_Code
	for range 3 {
		resp, err := call(d("local", "x"))
		if err != nil {
			t.Fatalf("failure_mode local: %v", err)
		}
		if m := meta(resp, 0); m["degraded"] != true {
			t.Errorf("local metadata %v, want degraded", m)
		}
		codes = append(codes, resp.GetOverallCode())
	}
	want := []rlsv3.RateLimitResponse_Code{rlsv3.RateLimitResponse_OK, rlsv3.RateLimitResponse_OK, rlsv3.RateLimitResponse_OVER_LIMIT}
	for i := range want {
		if codes[i] != want[i] {
			t.Fatalf("local answers %v, want %v", codes, want)
		}
	}

	// A deny refusing the request refunds what local charged: another key keeps its 2.
	if resp, _ := call(d("local", "y"), d("deny", "y")); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("local and deny: %v, want OVER_LIMIT", resp.GetOverallCode())
	}
	for i := range 2 {
		if resp, _ := call(d("local", "y")); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("local y call %d after a refunded refusal: %v, want OK", i, resp.GetOverallCode())
		}
	}

	// The native API flags the same.
	n := &native{s: srv}
	nresp, err := n.Check(ctx, &ratelimitdv1.CheckRequest{Domain: "d", Descriptors: []*ratelimitdv1.Descriptor{
		{Entries: []*ratelimitdv1.Entry{{Key: "allow", Value: "z"}}}}})
	if err != nil || !nresp.GetAllowed() || !nresp.GetDescriptors()[0].GetDegraded() {
		t.Errorf("native allow: %v %v, want allowed and degraded", nresp, err)
	}

	for mode, want := range map[string]float64{"allow": 2, "deny": 2, "local": 6} {
		if got := counterValue(t, reg, "ratelimitd_degraded_decisions_total", "mode", mode); got != want {
			t.Errorf("ratelimitd_degraded_decisions_total{mode=%q} = %v, want %v", mode, got, want)
		}
	}
}
