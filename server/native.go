package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// native serves ratelimitd.v1.RateLimiter. Its requests take the same path as Envoy's: they
// are turned into an Envoy request, matched, decided and graded by the same code, and only the
// answer is shaped differently.
type native struct {
	ratelimitdv1.UnimplementedRateLimiterServer
	s *Server
}

// Check decides a native request; see the proto for its contract.
func (n *native) Check(ctx context.Context, req *ratelimitdv1.CheckRequest) (*ratelimitdv1.CheckResponse, error) {
	s := n.s
	env, err := decodeNative(req.GetDomain(), req.GetDescriptors(), req.GetCost(), req.GetPriority(), req.GetTenant())
	r, verdicts, err := s.matchChecked(env, err)
	if err != nil {
		return nil, err
	}
	opts := options{priority: req.GetPriority(), tenant: req.GetTenant(), dryRun: req.GetDryRun()}
	if err := s.run(ctx, req.GetDomain(), env, verdicts, opts); err != nil {
		return nil, err
	}
	resp, overall := nativeResponse(verdicts)
	s.count(r, req.GetDomain(), overall)
	return resp, nil
}

// decodeNative validates the parts every native request shares and returns the Envoy request
// it stands for. Its errors name the field and are INVALID_ARGUMENT.
func decodeNative(domain string, ds []*ratelimitdv1.Descriptor, cost uint64, priority, tenant string) (*rlsv3.RateLimitRequest, error) {
	env, err := envoyRequest(domain, ds, cost)
	if err == nil {
		err = validateRequest(env)
	}
	if err == nil {
		err = validateMembers(priority, tenant)
	}
	return env, err
}

// envoyRequest is the Envoy request a native one stands for: the cost becomes hits_addend.
func envoyRequest(domain string, ds []*ratelimitdv1.Descriptor, cost uint64) (*rlsv3.RateLimitRequest, error) {
	if cost > math.MaxUint32 {
		return nil, fmt.Errorf("cost: %d is above %d", cost, uint32(math.MaxUint32))
	}
	env := &rlsv3.RateLimitRequest{
		Domain:      domain,
		HitsAddend:  uint32(cost),
		Descriptors: make([]*ratelimitv3.RateLimitDescriptor, len(ds)),
	}
	for i, d := range ds {
		if d == nil {
			env.Descriptors[i] = &ratelimitv3.RateLimitDescriptor{}
			continue
		}
		if c := d.Cost; c != nil && *c > math.MaxUint32 {
			return nil, fmt.Errorf("descriptors[%d].cost: %d is above %d", i, *c, uint32(math.MaxUint32))
		}
		ed := &ratelimitv3.RateLimitDescriptor{Entries: make([]*ratelimitv3.RateLimitDescriptor_Entry, len(d.GetEntries()))}
		for j, e := range d.GetEntries() {
			ed.Entries[j] = &ratelimitv3.RateLimitDescriptor_Entry{Key: e.GetKey(), Value: e.GetValue()}
		}
		if d.Cost != nil {
			ed.HitsAddend = wrapperspb.UInt64(d.GetCost())
		}
		env.Descriptors[i] = ed
	}
	return env, nil
}

func validateMembers(priority, tenant string) error {
	switch {
	case len(priority) > MaxStringBytes:
		return fmt.Errorf("priority: longer than %d bytes", MaxStringBytes)
	case len(tenant) > MaxStringBytes:
		return fmt.Errorf("tenant: longer than %d bytes", MaxStringBytes)
	}
	return nil
}

// nativeResponse shapes the verdicts as the native API answers them, with the request's grade.
func nativeResponse(verdicts []verdict) (*ratelimitdv1.CheckResponse, Grade) {
	resp := &ratelimitdv1.CheckResponse{Descriptors: make([]*ratelimitdv1.DescriptorResult, len(verdicts))}
	overall := GradeOK
	var retry time.Duration
	for i := range verdicts {
		v := &verdicts[i]
		d := &ratelimitdv1.DescriptorResult{Grade: nativeGrade(v.grade), Allowed: !v.grade.Refused() || v.shadow}
		resp.Descriptors[i] = d
		switch {
		case v.limit == nil:
			continue
		case v.limit.Unlimited:
			d.Unlimited = true
			d.Name = v.limit.Name
			d.Remaining = math.MaxUint32
			continue
		}
		quota, _ := policyOf(v)
		d.Limited = true
		d.Name = v.limit.Name
		d.Limit = uint64(quota)
		d.Remaining = uint64(remainingOf(v))
		d.ResetAfter = durationpb.New(v.result.ResetAfter)
		d.Shadow = v.shadow
		d.Degraded = v.degraded
		if v.grade.Refused() && v.grade != GradeNever {
			d.RetryAfter = durationpb.New(v.result.RetryAfter)
		}
		if v.limit.ShadowMode {
			continue // shadow limits never grade the request
		}
		overall = max(overall, v.grade)
		if v.grade.Refused() {
			retry = max(retry, v.result.RetryAfter)
		}
	}
	resp.Grade = nativeGrade(overall)
	resp.Allowed = !overall.Refused()
	if overall.Refused() && overall != GradeNever {
		resp.RetryAfter = durationpb.New(retry)
	}
	return resp, overall
}

func nativeGrade(g Grade) ratelimitdv1.Grade {
	switch g {
	case GradeNearLimit:
		return ratelimitdv1.Grade_GRADE_NEAR_LIMIT
	case GradeShed:
		return ratelimitdv1.Grade_GRADE_SHED
	case GradeOverLimit:
		return ratelimitdv1.Grade_GRADE_OVER_LIMIT
	case GradeNever:
		return ratelimitdv1.Grade_GRADE_NEVER
	}
	return ratelimitdv1.Grade_GRADE_OK
}

// Lease bounds. A lease lives for the TTL its caller asks for, at most the window of every
// concurrency rule it takes a slot of (the rule's unit times its unit_multiplier); when the
// caller asks for none it lives for the shortest of those windows.
const (
	// MinLeaseTTL is the shortest TTL a caller may ask for; TTLs count whole milliseconds.
	MinLeaseTTL = time.Millisecond
	// MaxLeaseTTL is the longest TTL a caller may ask for, the longest window of a rule.
	MaxLeaseTTL = config.MaxWindow
)

// Acquire takes one slot of every descriptor limited by a concurrency rule, for one lease,
// all or nothing: when any descriptor refuses, the slots taken are released before it
// answers. Descriptors limited by other algorithms are charged as Check charges them (their
// cost, 1 by default), and are part of the all-or-nothing decision; they are not given back
// by Release. See the proto for the contract.
func (n *native) Acquire(ctx context.Context, req *ratelimitdv1.AcquireRequest) (*ratelimitdv1.AcquireResponse, error) {
	s := n.s
	env, err := decodeNative(req.GetDomain(), req.GetDescriptors(), 0, req.GetPriority(), req.GetTenant())
	var ttl time.Duration
	if err == nil && req.GetTtl() != nil {
		ttl, err = leaseTTL(req.GetTtl())
	}
	r, verdicts, err := s.matchChecked(env, err)
	if err != nil {
		return nil, err
	}
	// The lease lives for the TTL asked (0: none), at most the shortest window of its rules.
	leases := false
	var window time.Duration
	for i := range verdicts {
		if v := &verdicts[i]; v.limited() && v.limit.Algorithm == config.Concurrency {
			if !leases || v.limit.Window < window {
				window = v.limit.Window
			}
			leases = true
		}
	}
	if leases && (ttl == 0 || ttl > window) {
		ttl = window
	}
	lease, err := newLease()
	if err != nil {
		return nil, status.Error(codes.Internal, "lease_id: "+err.Error())
	}
	opts := options{priority: req.GetPriority(), tenant: req.GetTenant(), lease: lease, leaseTTL: ttl}
	if err := s.run(ctx, req.GetDomain(), env, verdicts, opts); err != nil {
		return nil, err
	}
	check, overall := nativeResponse(verdicts)
	s.count(r, req.GetDomain(), overall)
	resp := &ratelimitdv1.AcquireResponse{
		Acquired:    check.GetAllowed(),
		Grade:       check.GetGrade(),
		RetryAfter:  check.GetRetryAfter(),
		Descriptors: check.GetDescriptors(),
	}
	if resp.Acquired {
		resp.LeaseId = formatLease(lease)
		if leases {
			resp.Ttl = durationpb.New(ttl)
		}
	}
	return resp, nil
}

// Release gives back the slots a lease holds for the request's descriptors (those limited by
// a concurrency rule; the others are ignored). released is true when at least one slot was
// still held; a lease that is unknown, expired or already released is not an error.
func (n *native) Release(ctx context.Context, req *ratelimitdv1.ReleaseRequest) (*ratelimitdv1.ReleaseResponse, error) {
	s := n.s
	lease, err := parseLease(req.GetLeaseId())
	var env *rlsv3.RateLimitRequest
	if err == nil {
		env, err = decodeNative(req.GetDomain(), req.GetDescriptors(), 0, "", "")
	}
	_, verdicts, err := s.matchChecked(env, err)
	if err != nil {
		return nil, err
	}
	var calls []algorithms.Request
	for i := range verdicts {
		v := &verdicts[i]
		if !v.limited() || v.limit.Algorithm != config.Concurrency {
			continue
		}
		calls = append(calls, algorithms.Request{
			Algorithm: algorithms.Concurrency,
			Key:       counterKey(s.prefix, req.GetDomain(), env.GetDescriptors()[i].GetEntries(), v.limit),
			Limit:     int64(v.limit.RequestsPerUnit),
			Window:    v.limit.Window,
			Hits:      -1,
			Lease:     lease,
		})
	}
	if len(calls) == 0 {
		return &ratelimitdv1.ReleaseResponse{}, nil
	}
	// A release gives slots back, as a refund gives hits back.
	results, err := s.decide(ctx, "refund", calls)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, status.FromContextError(ctxErr).Err()
		}
		s.log.Warn("release failed", zap.String("domain", req.GetDomain()), zap.Error(err))
		return nil, status.Error(codes.Unavailable, "storage unavailable")
	}
	resp := &ratelimitdv1.ReleaseResponse{}
	for _, res := range results {
		resp.Released = resp.Released || res.Allowed
	}
	return resp, nil
}

// leaseTTL checks a requested TTL; it is truncated to whole milliseconds.
func leaseTTL(d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("ttl: %v", err)
	}
	ttl := d.AsDuration().Truncate(time.Millisecond)
	if ttl < MinLeaseTTL || ttl > MaxLeaseTTL {
		return 0, fmt.Errorf("ttl: %v out of range [%v, %v]", d.AsDuration(), MinLeaseTTL, MaxLeaseTTL)
	}
	return ttl, nil
}

// A lease id is a random positive 63-bit integer, given to callers as 16 lowercase hex digits.
const leaseIDLen = 16

// newLease draws a lease from crypto/rand: unguessable, so that only its holder can release it.
func newLease() (int64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if l := int64(binary.BigEndian.Uint64(b[:]) &^ (1 << 63)); l != 0 {
			return l, nil
		}
	}
}

func formatLease(l int64) string { return fmt.Sprintf("%0*x", leaseIDLen, l) }

// parseLease reads a lease id given by formatLease.
func parseLease(id string) (int64, error) {
	if len(id) != leaseIDLen || strings.ToLower(id) != id {
		return 0, fmt.Errorf("lease_id: must be %d lowercase hex digits, as Acquire returned it", leaseIDLen)
	}
	u, err := strconv.ParseUint(id, 16, 64)
	if err != nil || u == 0 || u > math.MaxInt64 {
		return 0, fmt.Errorf("lease_id: must be %d lowercase hex digits, as Acquire returned it", leaseIDLen)
	}
	return int64(u), nil
}
