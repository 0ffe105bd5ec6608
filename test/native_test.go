package test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// answer is what both APIs say of one request: the gRPC code, and per descriptor the code
// (OK or OVER_LIMIT), the limit and the remaining.
type answer struct {
	code     string
	overall  string
	statuses []string
}

func (a answer) String() string {
	return fmt.Sprintf("%s %s %v", a.code, a.overall, a.statuses)
}

func envoyAnswer(resp *rlsv3.RateLimitResponse, err error) answer {
	a := answer{code: status.Code(err).String()}
	if err != nil {
		return a
	}
	a.overall = resp.GetOverallCode().String()
	for _, st := range resp.GetStatuses() {
		a.statuses = append(a.statuses, fmt.Sprintf("%s limit=%d remaining=%d", st.GetCode(), st.GetCurrentLimit().GetRequestsPerUnit(), st.GetLimitRemaining()))
	}
	return a
}

func nativeAnswer(resp *ratelimitdv1.CheckResponse, err error) answer {
	a := answer{code: status.Code(err).String()}
	if err != nil {
		return a
	}
	code := func(allowed bool) string {
		if allowed {
			return rlsv3.RateLimitResponse_OK.String()
		}
		return rlsv3.RateLimitResponse_OVER_LIMIT.String()
	}
	a.overall = code(resp.GetAllowed())
	for _, d := range resp.GetDescriptors() {
		a.statuses = append(a.statuses, fmt.Sprintf("%s limit=%d remaining=%d", code(d.GetAllowed()), d.GetLimit(), clamp32(d.GetRemaining())))
	}
	return a
}

func clamp32(n uint64) uint64 { return min(n, 1<<32-1) }

// nativeCheck is the native request standing for an Envoy one, or false when the native API
// cannot say it (a request-side limit override, negative hits).
func nativeCheck(req *rlsv3.RateLimitRequest) (*ratelimitdv1.CheckRequest, bool) {
	n := &ratelimitdv1.CheckRequest{Domain: req.GetDomain(), Cost: uint64(req.GetHitsAddend())}
	for _, d := range req.GetDescriptors() {
		if d.GetLimit() != nil || d.GetIsNegativeHits() {
			return nil, false
		}
		nd := &ratelimitdv1.Descriptor{}
		for _, e := range d.GetEntries() {
			nd.Entries = append(nd.Entries, &ratelimitdv1.Entry{Key: e.GetKey(), Value: e.GetValue()})
		}
		if h := d.GetHitsAddend(); h != nil {
			c := h.GetValue()
			nd.Cost = &c
		}
		n.Descriptors = append(n.Descriptors, nd)
	}
	return n, true
}

// scenarioRequests are a scenario's requests, one per call (repetitions expanded).
func scenarioRequests(sc scenario) []*rlsv3.RateLimitRequest {
	var reqs []*rlsv3.RateLimitRequest
	for i, st := range sc.Steps {
		req := sc.request(i)
		for range max(st.Repeat, 1) {
			reqs = append(reqs, req)
		}
	}
	return reqs
}

// TestNativeAndEnvoySideBySide replays the conformance scenarios on two services with the
// same config, in lockstep: one answers every call through Envoy's API, the other alternates
// between the native API and Envoy's, so that the counters one API charges are read by the
// other. Every answer must be the same.
func TestNativeAndEnvoySideBySide(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			envoy := b.start(t, serviceOptions{configDir: "testdata/config"})
			mixed := b.start(t, serviceOptions{configDir: "testdata/config"})
			native := ratelimitdv1.NewRateLimiterClient(mixed.conn)
			natives := 0
			for name, sc := range loadScenarios(t) {
				for i, req := range scenarioRequests(sc) {
					want := envoyAnswer(envoy.call(req))
					var got answer
					via := "Envoy"
					if n, ok := nativeCheck(req); ok && i%2 == 0 {
						via = "native"
						natives++
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						got = nativeAnswer(native.Check(ctx, n))
						cancel()
					} else {
						got = envoyAnswer(mixed.call(req))
					}
					if got.String() != want.String() {
						t.Errorf("%s call %d via %s: got %v, want (Envoy API) %v", name, i, via, got, want)
					}
				}
			}
			if natives < 10 {
				t.Errorf("only %d calls went through the native API", natives)
			}
		})
	}
}

func leaseDescriptor(kv ...string) *ratelimitdv1.Descriptor {
	d := &ratelimitdv1.Descriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &ratelimitdv1.Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func acquire(t *testing.T, c ratelimitdv1.RateLimiterClient, ttl time.Duration, ds ...*ratelimitdv1.Descriptor) *ratelimitdv1.AcquireResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req := &ratelimitdv1.AcquireRequest{Domain: "leases", Descriptors: ds}
	if ttl > 0 {
		req.Ttl = durationpb.New(ttl)
	}
	resp, err := c.Acquire(ctx, req)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return resp
}

func release(t *testing.T, c ratelimitdv1.RateLimiterClient, lease string, ds ...*ratelimitdv1.Descriptor) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := c.Release(ctx, &ratelimitdv1.ReleaseRequest{Domain: "leases", LeaseId: lease, Descriptors: ds})
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	return resp.GetReleased()
}

// TestNativeLeases takes and gives back concurrency slots through the real binary.
func TestNativeLeases(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := b.start(t, serviceOptions{configDir: "testdata/config"})
			c := ratelimitdv1.NewRateLimiterClient(s.conn)
			w := leaseDescriptor("worker", "w")
			first := acquire(t, c, 0, w)
			second := acquire(t, c, 0, w)
			if !first.GetAcquired() || !second.GetAcquired() || first.GetTtl().AsDuration() != 10*time.Second {
				t.Fatalf("two leases of two slots: %v / %v, want both acquired for the rule's 10s", first, second)
			}
			third := acquire(t, c, 0, w)
			if third.GetAcquired() || third.GetGrade() != ratelimitdv1.Grade_GRADE_OVER_LIMIT || third.GetRetryAfter().AsDuration() <= 0 {
				t.Errorf("a third lease: %v, want refused OVER_LIMIT with a retry-after", third)
			}
			// Envoy's API sees the slots, and takes none.
			env := &rlsv3.RateLimitRequest{Domain: "leases", Descriptors: []*ratelimitv3.RateLimitDescriptor{{Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: "worker", Value: "w"}}}}}
			if r := s.mustCall(env); r.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
				t.Errorf("Envoy API with every slot taken: %v, want OVER_LIMIT", r.GetOverallCode())
			}
			if !release(t, c, first.GetLeaseId(), w) {
				t.Errorf("release of a held lease: not released")
			}
			if release(t, c, first.GetLeaseId(), w) {
				t.Errorf("second release: released, want not")
			}
			if r := s.mustCall(env); r.GetOverallCode() != rlsv3.RateLimitResponse_OK || r.GetStatuses()[0].GetLimitRemaining() != 1 {
				t.Errorf("Envoy API with a slot free: %v, want OK with 1 remaining", r.GetStatuses()[0])
			}
			// All or nothing: the rate rule refuses the 4th, and that lease takes no slot.
			for i := range 4 {
				r := acquire(t, c, 0, leaseDescriptor("worker", "x"), leaseDescriptor("rate", "x"))
				if got, want := r.GetAcquired(), i < 2; got != want {
					t.Errorf("lease %d of worker=x and rate=x: acquired %v, want %v", i, got, want)
				}
				if i == 2 && r.GetDescriptors()[0].GetAllowed() != false {
					t.Errorf("lease 2: worker slots %v, want refused", r.GetDescriptors()[0])
				}
			}
			if _, err := c.Release(context.Background(), &ratelimitdv1.ReleaseRequest{Domain: "leases", LeaseId: "nope", Descriptors: []*ratelimitdv1.Descriptor{w}}); status.Code(err).String() != "InvalidArgument" || !strings.HasPrefix(status.Convert(err).Message(), "lease_id:") {
				t.Errorf("release of a malformed lease id: %v, want InvalidArgument naming lease_id", err)
			}
		})
	}
}

// TestNativeLeaseHolderDies: a holder acquires and never releases; its slot frees by itself
// at the lease's TTL.
func TestNativeLeaseHolderDies(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := b.start(t, serviceOptions{configDir: "testdata/config"})
			c := ratelimitdv1.NewRateLimiterClient(s.conn)
			w := leaseDescriptor("worker", "dies")
			const ttl = 2 * time.Second
			for range 2 {
				if r := acquire(t, c, ttl, w); !r.GetAcquired() || r.GetTtl().AsDuration() != ttl {
					t.Fatalf("lease of the dying holder: %v, want acquired for %v", r, ttl)
				}
			}
			// Both leases were taken before this moment, so both end before held + ttl.
			held := time.Now()
			if r := acquire(t, c, 0, w); r.GetAcquired() || r.GetRetryAfter().AsDuration() <= 0 || r.GetRetryAfter().AsDuration() > ttl {
				t.Fatalf("lease while both slots are held: %v, want refused with a retry-after of at most %v", r, ttl)
			}
			// The holder is gone; once its leases' TTL has passed its slots are free again.
			time.Sleep(time.Until(held.Add(ttl + 50*time.Millisecond)))
			for i := range 2 {
				if r := acquire(t, c, 0, w); !r.GetAcquired() {
					t.Errorf("lease %d after the dead holder's TTL: %v, want acquired", i, r)
				}
			}
		})
	}
}
