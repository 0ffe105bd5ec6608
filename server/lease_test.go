package server

import (
	"context"
	"strings"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

const leaseConfig = `
domain: d
descriptors:
  - key: jobs
    rate_limit: {algorithm: concurrency, unit: second, unit_multiplier: 10, requests_per_unit: 2, name: jobs}
  - key: pair
    rate_limit: {algorithm: concurrency, unit: second, requests_per_unit: 1}
  - key: fw
    rate_limit: {unit: minute, requests_per_unit: 3}
`

func (h *harness) acquire(t *testing.T, ttl time.Duration, ds ...*ratelimitdv1.Descriptor) *ratelimitdv1.AcquireResponse {
	t.Helper()
	req := &ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: ds}
	if ttl != 0 {
		req.Ttl = durationpb.New(ttl)
	}
	resp, err := h.native.Acquire(context.Background(), req)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return resp
}

func (h *harness) release(t *testing.T, lease string, ds ...*ratelimitdv1.Descriptor) bool {
	t.Helper()
	resp, err := h.native.Release(context.Background(), &ratelimitdv1.ReleaseRequest{Domain: "d", LeaseId: lease, Descriptors: ds})
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	return resp.GetReleased()
}

func TestAcquireRelease(t *testing.T) {
	h := newHarnessConfig(t, Options{}, leaseConfig)
	jobs := nd("jobs", "a")
	first := h.acquire(t, 0, jobs)
	if !first.GetAcquired() || len(first.GetLeaseId()) != leaseIDLen || first.GetTtl().AsDuration() != 10*time.Second {
		t.Fatalf("first lease: %v, want acquired with a lease id and the rule's window (10s) as TTL", first)
	}
	if d := first.GetDescriptors()[0]; d.GetLimit() != 2 || d.GetRemaining() != 1 || d.GetName() != "jobs" {
		t.Errorf("first lease: descriptor %v, want limit 2 remaining 1 named jobs", d)
	}
	second := h.acquire(t, 3*time.Second, jobs)
	if !second.GetAcquired() || second.GetTtl().AsDuration() != 3*time.Second || second.GetLeaseId() == first.GetLeaseId() {
		t.Fatalf("second lease: %v, want acquired for 3s with another id", second)
	}
	if got := second.GetGrade(); got != ratelimitdv1.Grade_GRADE_NEAR_LIMIT {
		t.Errorf("second lease (2 of 2): grade %v, want NEAR_LIMIT", got)
	}
	h.clock.Add(time.Second)
	third := h.acquire(t, 0, jobs)
	if third.GetAcquired() || third.GetLeaseId() != "" || third.GetGrade() != ratelimitdv1.Grade_GRADE_OVER_LIMIT || third.GetRetryAfter().AsDuration() != 2*time.Second {
		t.Errorf("third lease: %v, want refused OVER_LIMIT, retry after 2s (the second lease's TTL)", third)
	}
	// Envoy's API and the native Check see the slots without taking one.
	if r := h.call(t, d("jobs", "a")); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Errorf("Envoy API with every slot taken: %v, want OVER_LIMIT", r.GetOverallCode())
	}
	if !h.release(t, first.GetLeaseId(), jobs) {
		t.Errorf("release of the first lease: not released")
	}
	if h.release(t, first.GetLeaseId(), jobs) {
		t.Errorf("second release of the first lease: released, want not")
	}
	for range 3 {
		if r := h.call(t, d("jobs", "a")); r.GetOverallCode() != rlsv3.RateLimitResponse_OK || r.GetStatuses()[0].GetLimitRemaining() != 1 {
			t.Errorf("Envoy API with one slot free: %v, want OK with 1 remaining (a check takes no slot)", r.GetStatuses()[0])
		}
	}
	if !h.acquire(t, 0, jobs).GetAcquired() {
		t.Errorf("lease after a release: refused")
	}
	// Another value is another key.
	if !h.acquire(t, 0, nd("jobs", "b")).GetAcquired() {
		t.Errorf("lease of jobs=b: refused")
	}
}

// TestLeaseHolderDies: a lease never released frees its slot when its TTL ends.
func TestLeaseHolderDies(t *testing.T) {
	h := newHarnessConfig(t, Options{}, leaseConfig)
	pair := nd("pair", "x")
	dead := h.acquire(t, 300*time.Millisecond, pair)
	if !dead.GetAcquired() {
		t.Fatalf("first lease: refused")
	}
	h.clock.Add(299 * time.Millisecond)
	if r := h.acquire(t, 0, pair); r.GetAcquired() || r.GetRetryAfter().AsDuration() != time.Millisecond {
		t.Errorf("lease before the TTL: %v, want refused, retry after 1ms", r)
	}
	h.clock.Add(time.Millisecond)
	next := h.acquire(t, 0, pair)
	if !next.GetAcquired() || next.GetTtl().AsDuration() != time.Second {
		t.Errorf("lease at the TTL: %v, want acquired for the rule's 1s", next)
	}
	if h.release(t, dead.GetLeaseId(), pair) {
		t.Errorf("release of the expired lease: released, want not")
	}
	// A TTL above the rule's window is cut to it.
	h.clock.Add(time.Second)
	if r := h.acquire(t, time.Hour, pair); r.GetTtl().AsDuration() != time.Second {
		t.Errorf("lease asking 1h of a 1s rule: ttl %v, want 1s", r.GetTtl().AsDuration())
	}
}

// TestAcquireAllOrNothing: a refusal by one descriptor releases the slots the others took, and
// refunds the rate-limited ones.
func TestAcquireAllOrNothing(t *testing.T) {
	h := newHarnessConfig(t, Options{}, leaseConfig)
	if !h.acquire(t, 0, nd("pair", "x")).GetAcquired() {
		t.Fatal("pair=x: refused")
	}
	r := h.acquire(t, 0, nd("jobs", "a"), nd("fw", "a"), nd("pair", "x"))
	if r.GetAcquired() || r.GetDescriptors()[2].GetGrade() != ratelimitdv1.Grade_GRADE_OVER_LIMIT {
		t.Fatalf("with pair=x taken: %v, want refused by pair", r)
	}
	// jobs=a has both slots, fw=a all of its 3.
	both := h.acquire(t, 0, nd("jobs", "a"), nd("fw", "a"))
	if !both.GetAcquired() || both.GetDescriptors()[0].GetRemaining() != 1 || both.GetDescriptors()[1].GetRemaining() != 2 {
		t.Fatalf("after the refusal: %v, want jobs remaining 1 and fw remaining 2", both)
	}
	// Release gives back the slot, not the rate-limited hit.
	if !h.release(t, both.GetLeaseId(), nd("jobs", "a"), nd("fw", "a")) {
		t.Errorf("release: not released")
	}
	if r := h.call(t, d("fw", "a")); r.GetStatuses()[0].GetLimitRemaining() != 1 {
		t.Errorf("fw after release: remaining %d, want 1", r.GetStatuses()[0].GetLimitRemaining())
	}
	// A lease of no concurrency rule is granted, and its release frees nothing.
	only := h.acquire(t, 0, nd("fw", "b"))
	if !only.GetAcquired() || only.GetTtl() != nil || only.GetLeaseId() == "" {
		t.Errorf("lease of fw only: %v, want acquired without a ttl", only)
	}
	if h.release(t, only.GetLeaseId(), nd("fw", "b")) {
		t.Errorf("release of a lease that holds no slot: released, want not")
	}
}

func TestLeaseBadInput(t *testing.T) {
	h := newHarnessConfig(t, Options{}, leaseConfig)
	jobs := []*ratelimitdv1.Descriptor{nd("jobs", "a")}
	for _, c := range []struct {
		req   *ratelimitdv1.AcquireRequest
		field string
	}{
		{&ratelimitdv1.AcquireRequest{Descriptors: jobs}, "domain"},
		{&ratelimitdv1.AcquireRequest{Domain: "d"}, "descriptors"},
		{&ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: jobs, Ttl: durationpb.New(-time.Second)}, "ttl"},
		{&ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: jobs, Ttl: durationpb.New(0)}, "ttl"},
		{&ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: jobs, Ttl: durationpb.New(time.Microsecond)}, "ttl"},
		{&ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: jobs, Ttl: durationpb.New(MaxLeaseTTL + time.Millisecond)}, "ttl"},
		{&ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: jobs, Ttl: &durationpb.Duration{Seconds: 1, Nanos: -1}}, "ttl"},
		{&ratelimitdv1.AcquireRequest{Domain: "d", Descriptors: jobs, Priority: strings.Repeat("p", MaxStringBytes+1)}, "priority"},
	} {
		_, err := h.native.Acquire(context.Background(), c.req)
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), c.field+":") {
			t.Errorf("Acquire(%v) = %v, want InvalidArgument starting with %q", c.req, err, c.field+":")
		}
	}
	for _, c := range []struct {
		req   *ratelimitdv1.ReleaseRequest
		field string
	}{
		{&ratelimitdv1.ReleaseRequest{Domain: "d", Descriptors: jobs}, "lease_id"},
		{&ratelimitdv1.ReleaseRequest{Domain: "d", Descriptors: jobs, LeaseId: "0000000000000000"}, "lease_id"},
		{&ratelimitdv1.ReleaseRequest{Domain: "d", Descriptors: jobs, LeaseId: "8000000000000000"}, "lease_id"},
		{&ratelimitdv1.ReleaseRequest{Domain: "d", Descriptors: jobs, LeaseId: "00000000000000AB"}, "lease_id"},
		{&ratelimitdv1.ReleaseRequest{Domain: "d", Descriptors: jobs, LeaseId: "+000000000000001"}, "lease_id"},
		{&ratelimitdv1.ReleaseRequest{Domain: "d", Descriptors: jobs, LeaseId: "12"}, "lease_id"},
		{&ratelimitdv1.ReleaseRequest{Domain: "d", LeaseId: "0000000000000001"}, "descriptors"},
		{&ratelimitdv1.ReleaseRequest{Descriptors: jobs, LeaseId: "0000000000000001"}, "domain"},
	} {
		_, err := h.native.Release(context.Background(), c.req)
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), c.field+":") {
			t.Errorf("Release(%v) = %v, want InvalidArgument starting with %q", c.req, err, c.field+":")
		}
	}
	// A well-formed id nobody holds is not an error.
	if h.release(t, "0123456789abcdef", jobs...) {
		t.Errorf("release of an unknown lease: released, want not")
	}
}

func TestLeaseIDs(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		l, err := newLease()
		if err != nil {
			t.Fatal(err)
		}
		id := formatLease(l)
		back, err := parseLease(id)
		if err != nil || back != l || l <= 0 {
			t.Fatalf("lease %d as %q parses back as %d, %v", l, id, back, err)
		}
		if seen[id] {
			t.Fatalf("lease id %q drawn twice", id)
		}
		seen[id] = true
	}
}
