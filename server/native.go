package server

import (
	"context"
	"fmt"
	"math"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

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
	env, err := envoyRequest(req.GetDomain(), req.GetDescriptors(), req.GetCost())
	if err == nil {
		err = validateRequest(env)
	}
	if err == nil {
		err = validateMembers(req.GetPriority(), req.GetTenant())
	}
	if err == nil && req.GetDryRun() {
		// TODO(dry run): remove once every algorithm decides without writing.
		return nil, status.Error(codes.Unimplemented, "dry_run: not supported yet")
	}
	if err != nil {
		s.metrics.invalid.Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	r := s.rules.Load()
	if r == nil {
		return nil, status.Error(codes.Unavailable, errNoRules.Error())
	}
	verdicts := s.match(r.set, env)
	opts := options{priority: req.GetPriority(), tenant: req.GetTenant(), dryRun: req.GetDryRun()}
	if err := s.run(ctx, req.GetDomain(), env, verdicts, opts); err != nil {
		return nil, err
	}
	resp, overall := nativeResponse(verdicts)
	s.count(r, req.GetDomain(), overall)
	return resp, nil
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
		quota, _ := policyOf(v.limit)
		d.Limited = true
		d.Name = v.limit.Name
		d.Limit = uint64(quota)
		d.Remaining = uint64(remainingOf(v))
		d.ResetAfter = durationpb.New(v.result.ResetAfter)
		d.Shadow = v.shadow
		if v.grade.Refused() && v.grade != GradeNever {
			d.RetryAfter = durationpb.New(v.result.RetryAfter)
		}
		if v.shadow {
			continue
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
