package server

import (
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ratelimitd/ratelimitd/config"
)

const sharedConfig = `
domain: d
descriptors:
  - key: fw
    rate_limit: {unit: minute, requests_per_unit: 4}
  - key: api
    value: checkout
    descriptors:
      - key: priority
        rate_limit:
          algorithm: priority
          unit: second
          requests_per_unit: 10
          priority:
            default_class: default
            classes:
              - {name: critical, share: 1}
              - {name: default, share: 0.8}
              - {name: sheddable, share: 0.5}
  - key: pool
    descriptors:
      - key: tenant
        rate_limit:
          algorithm: fair_share
          unit: second
          requests_per_unit: 4
          fair_share: {weights: {big: 3}}
`

// class builds the descriptor (api=checkout, priority=class).
func class(c string) *ratelimitv3.RateLimitDescriptor {
	return &ratelimitv3.RateLimitDescriptor{Entries: entries("api", "checkout", "priority", c)}
}

func tenant(t string) *ratelimitv3.RateLimitDescriptor {
	return &ratelimitv3.RateLimitDescriptor{Entries: entries("pool", "p", "tenant", t)}
}

// meta is a descriptor's dynamic metadata.
func meta(resp *rlsv3.RateLimitResponse, i int) map[string]any {
	return resp.GetDynamicMetadata().AsMap()["descriptors"].([]any)[i].(map[string]any)
}

func TestPriorityOverEnvoy(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarnessConfig(t, Options{Registerer: reg}, sharedConfig)
	// Sheddable fills its 5, then is shed: Envoy sees OVER_LIMIT with a Retry-After.
	for i := range 5 {
		if resp := h.call(t, class("sheddable")); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			t.Fatalf("sheddable %d: %v, want OK", i, resp.GetOverallCode())
		}
	}
	resp := h.call(t, class("sheddable"))
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || resp.GetStatuses()[0].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("sixth sheddable: %v, want OVER_LIMIT", resp)
	}
	m := resp.GetDynamicMetadata().AsMap()
	if m["grade"] != "shed" || meta(resp, 0)["grade"] != "shed" || meta(resp, 0)["class"] != "sheddable" {
		t.Errorf("metadata %v, want grade shed for class sheddable", m)
	}
	// Sub-window [10s, 10.05s) counts until 11.05s: Retry-After 1.05s, rounded up to 2.
	if got := meta(resp, 0)["retry_after_ms"]; got != 1050.0 {
		t.Errorf("retry_after_ms = %v, want 1050", got)
	}
	hdr := headers(resp.GetResponseHeadersToAdd())
	if hdr["Retry-After"] != "2" {
		t.Errorf("Retry-After = %q, want 2", hdr["Retry-After"])
	}
	if got, want := hdr["RateLimit-Policy"], `"d/api=checkout/priority";q=5;w=1`; got != want {
		t.Errorf("RateLimit-Policy = %q, want %q (the class's capacity)", got, want)
	}
	// An unknown class counts as the default class (8): 3 more, then shed.
	for i := range 3 {
		if resp := h.call(t, class("bogus")); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || meta(resp, 0)["class"] != "default" {
			t.Fatalf("unknown class %d: %v %v, want OK as class default", i, resp.GetOverallCode(), meta(resp, 0))
		}
	}
	if g := meta(h.call(t, class("")), 0)["grade"]; g != "shed" {
		t.Errorf("empty class at 8 of 8: grade %v, want shed", g)
	}
	// Critical has the headroom above the others' shares, then the limit is spent.
	if resp := h.call(t, withHits(class("critical"), 2)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("critical at 8 of 10: %v, want OK", resp.GetOverallCode())
	}
	resp = h.call(t, class("critical"))
	if g := meta(resp, 0)["grade"]; g != "over_limit" || headers(resp.GetResponseHeadersToAdd())["Retry-After"] == "" {
		t.Errorf("critical at 10 of 10: grade %v, headers %v, want over_limit with Retry-After", g, resp.GetResponseHeadersToAdd())
	}
	if g := meta(h.call(t, withHits(class("sheddable"), 6)), 0)["grade"]; g != "never" {
		t.Errorf("sheddable cost 6 > 5: grade %v, want never", g)
	}
	if got := counterValue(t, reg, "ratelimitd_decisions_total", "grade", "shed"); got != 2 {
		t.Errorf("decisions{grade=shed} = %v, want 2", got)
	}

	// All-or-nothing: a request shed by its priority descriptor refunds the other one.
	h.clock.Add(5 * time.Second)
	for range 5 {
		h.call(t, class("sheddable"))
	}
	resp = h.call(t, d("fw", "x"), class("sheddable"))
	if g := resp.GetDynamicMetadata().AsMap()["grade"]; g != "shed" {
		t.Fatalf("grade %v, want shed", g)
	}
	if got := h.call(t, d("fw", "x")).GetStatuses()[0].GetLimitRemaining(); got != 3 {
		t.Errorf("fw after the shed request: remaining %d, want 3 (refunded)", got)
	}
}

func TestFairShareOverEnvoy(t *testing.T) {
	h := newHarnessConfig(t, Options{}, sharedConfig)
	// Alone, "small" may use the whole pool of 4.
	if resp := h.call(t, withHits(tenant("small"), 4)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("alone, 4 of 4: %v, want OK", resp.GetOverallCode())
	}
	// "big" joins half a second later when the pool is spent: over limit until the next
	// window.
	h.clock.Add(500 * time.Millisecond)
	resp := h.call(t, tenant("big"))
	if g := meta(resp, 0)["grade"]; g != "over_limit" || meta(resp, 0)["tenant"] != "big" {
		t.Errorf("big joining a spent pool: %v, want over_limit for tenant big", meta(resp, 0))
	}
	if got := meta(resp, 0)["retry_after_ms"]; got != 500.0 {
		t.Errorf("retry_after_ms = %v, want 500 (the next window)", got)
	}
	// Next window: both active; big weighs 3 (share 3), small 1 (share 1).
	h.clock.Add(500 * time.Millisecond)
	if resp := h.call(t, withHits(tenant("small"), 1)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("small within its share: %v, want OK", resp.GetOverallCode())
	}
	resp = h.call(t, tenant("small"))
	if g := meta(resp, 0)["grade"]; g != "shed" || headers(resp.GetResponseHeadersToAdd())["Retry-After"] != "1" {
		t.Errorf("small above its share: %v %v, want shed with Retry-After 1", meta(resp, 0), resp.GetResponseHeadersToAdd())
	}
	if resp := h.call(t, withHits(tenant("big"), 3)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("big within its share: %v, want OK", resp.GetOverallCode())
	}
}

func TestSharedCounterKey(t *testing.T) {
	pr := &config.Limit{Algorithm: config.Priority, Window: time.Second}
	fs := &config.Limit{Algorithm: config.FairShare, Window: time.Minute}
	tests := []struct {
		kv    []string
		limit *config.Limit
		want  string
	}{
		{[]string{"api", "checkout", "priority", "critical"}, pr, "p:{d|api=checkout|priority}:pr:1000"},
		{[]string{"api", "checkout", "priority", "sheddable"}, pr, "p:{d|api=checkout|priority}:pr:1000"},
		{[]string{"tenant", "acme"}, fs, "p:{d|tenant}:fs:60000"},
		// The same descriptor with a literal "*" under another algorithm keeps its value.
		{[]string{"tenant", "*"}, minute, "p:{d|tenant=*}:fw:60000"},
		{[]string{"tenant=", ""}, minute, "p:{d|tenant%3D=}:fw:60000"},
	}
	for _, tt := range tests {
		if got := counterKey("p:", "d", entries(tt.kv...), tt.limit); got != tt.want {
			t.Errorf("counterKey(%q, %s) = %q, want %q", tt.kv, tt.limit.Algorithm, got, tt.want)
		}
	}
}

func TestGradeOrder(t *testing.T) {
	order := []Grade{GradeOK, GradeNearLimit, GradeShed, GradeOverLimit, GradeNever}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("%v is not below %v", order[i-1], order[i])
		}
	}
	if !GradeShed.Refused() || GradeNearLimit.Refused() || GradeShed.String() != "shed" {
		t.Errorf("shed: Refused %v, String %q; want refused and \"shed\"", GradeShed.Refused(), GradeShed.String())
	}
}

// counterValue reads the counter name{label=value} from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
