package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
)

var errNoRules = errors.New("no configuration loaded yet")

// verdict is the decision for one request descriptor.
type verdict struct {
	limit  *config.Limit // nil: nothing limits this descriptor
	hits   int64
	result algorithms.Result
	grade  Grade
	// shadow marks a refusal that shadow mode turned into an admission.
	shadow bool
	// degraded marks an answer given by the rule's failure mode while the store failed.
	degraded bool
	// member is the priority class (after the fallback to the default class) or the
	// fair_share tenant; empty for other algorithms.
	member string
}

// refundable reports whether the descriptor was charged and must be given back when another
// descriptor refuses the request.
func (v *verdict) refundable() bool {
	return v.result.Allowed && v.hits > 0 && !v.limit.CountRejected
}

// limited reports whether the descriptor was counted by an algorithm.
func (v *verdict) limited() bool { return v.limit != nil && !v.limit.Unlimited }

// ShouldRateLimit decides one Envoy rate-limit request: every descriptor is matched, the
// limited ones are charged in one batch, and a refusal by any of them refunds the others
// (all-or-nothing), except for rules with count_rejected.
func (s *Server) ShouldRateLimit(ctx context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	r, verdicts, err := s.matchChecked(req, validateRequest(req))
	if err != nil {
		return nil, err
	}
	if err := s.run(ctx, req.GetDomain(), req, verdicts, options{}); err != nil {
		return nil, err
	}
	resp, overall := s.respond(verdicts)
	s.count(r, req.GetDomain(), overall)
	return resp, nil
}

// matchChecked answers a request that failed validation (invalid) with INVALID_ARGUMENT, and
// otherwise matches it against the rules in force.
func (s *Server) matchChecked(req *rlsv3.RateLimitRequest, invalid error) (*rules, []verdict, error) {
	if invalid != nil {
		s.metrics.invalid.Inc()
		return nil, nil, status.Error(codes.InvalidArgument, invalid.Error())
	}
	r := s.rules.Load()
	if r == nil {
		return nil, nil, status.Error(codes.Unavailable, errNoRules.Error())
	}
	return r, s.match(r.set, req), nil
}

// options are what the native API adds to a request.
type options struct {
	// priority and tenant name the class of priority rules and the tenant of fair_share
	// rules; when empty, the descriptor's last value does.
	priority, tenant string
	// dryRun grades as if charged and charges nothing.
	dryRun bool
	// lease, when not zero, is the lease that Acquire takes a slot of every concurrency rule
	// for, for leaseTTL. Without one, a concurrency rule is a check that takes no slot.
	lease    int64
	leaseTTL time.Duration
}

// count records an answered request under its domain (or "other" when it is not configured).
func (s *Server) count(r *rules, domain string, overall Grade) {
	if !r.domains[domain] {
		domain = "other"
	}
	s.metrics.decisions.WithLabelValues(domain, overall.String()).Inc()
}

// match finds the limit and the cost of every descriptor, applying request-side overrides and
// the rules' replaces.
func (s *Server) match(set *config.Set, req *rlsv3.RateLimitRequest) []verdict {
	hits := int64(req.GetHitsAddend())
	if hits == 0 {
		hits = 1
	}
	verdicts := make([]verdict, len(req.GetDescriptors()))
	replacing := false
	for i, d := range req.GetDescriptors() {
		v := &verdicts[i]
		v.limit = config.Lookup(set, req.GetDomain(), d.GetEntries())
		if o := d.GetLimit(); o != nil {
			v.limit = overrideLimit(v.limit, o)
		}
		v.hits = hits
		if h := d.GetHitsAddend(); h != nil {
			v.hits = int64(h.GetValue())
		}
		if d.GetIsNegativeHits() {
			v.hits = -v.hits
		}
		if v.limit != nil && len(v.limit.Replaces) > 0 {
			replacing = true
		}
	}
	if replacing {
		replaced := make(map[string]bool)
		for _, v := range verdicts {
			if v.limit != nil {
				for _, name := range v.limit.Replaces {
					replaced[name] = true
				}
			}
		}
		for i := range verdicts {
			if l := verdicts[i].limit; l != nil && l.Name != "" && replaced[l.Name] {
				verdicts[i].limit = nil
			}
		}
	}
	return verdicts
}

// run charges every limited descriptor in one batch and grades the results. When a descriptor
// refuses the request, what the others were charged is refunded in a second batch.
func (s *Server) run(ctx context.Context, domain string, req *rlsv3.RateLimitRequest, verdicts []verdict, opts options) error {
	calls := make([]algorithms.Request, 0, len(verdicts))
	owners := make([]int, 0, len(verdicts))
	for i := range verdicts {
		v := &verdicts[i]
		if !v.limited() {
			continue
		}
		l := v.limit
		entries := req.GetDescriptors()[i].GetEntries()
		call := algorithms.Request{
			Algorithm:     algorithms.Name(l.Algorithm),
			Key:           counterKey(s.prefix, domain, entries, l),
			Limit:         int64(l.RequestsPerUnit),
			Window:        l.Window,
			Burst:         int64(l.Burst),
			Hits:          v.hits,
			CountRejected: l.CountRejected,
			DryRun:        opts.dryRun,
		}
		// The last entry's value names the class or the tenant (unless the native API's
		// priority or tenant does); every value shares the key.
		switch value := entries[len(entries)-1].GetValue(); {
		case l.Priority != nil:
			if opts.priority != "" {
				value = opts.priority
			}
			class := l.Priority.Class(value)
			v.member, call.Share = class.Name, class.Share
		case l.FairShare != nil:
			if opts.tenant != "" {
				value = opts.tenant
			}
			v.member, call.Member = value, value
			call.Weight, call.IdleTimeout = l.FairShare.Weight(value), l.FairShare.IdleTimeout
		case l.Algorithm == config.Concurrency:
			// Only a lease takes a slot (one, whatever the cost); otherwise the rule checks
			// that a slot is free. A refused request releases the slot (refund, hits -1).
			v.hits = 0
			if opts.lease != 0 {
				v.hits, call.Lease, call.Window = 1, opts.lease, opts.leaseTTL
			}
			call.Hits = v.hits
		}
		calls = append(calls, call)
		if req.GetDescriptors()[i].GetLimit() != nil {
			// Configured limits were checked when loaded; an override is checked here.
			if err := algorithms.Check(&calls[len(calls)-1]); err != nil {
				s.metrics.invalid.Inc()
				return status.Error(codes.InvalidArgument, fmt.Sprintf("descriptors[%d].limit: %v", i, err))
			}
		}
		owners = append(owners, i)
	}
	if len(calls) == 0 {
		return nil
	}
	charged := time.Now()
	results, err := s.decide(ctx, "decide", calls)
	roundTrip := time.Since(charged)
	var partial *algorithms.PartialError
	if err != nil && !errors.As(err, &partial) {
		// The rules' failure modes decide (failure.go).
		return s.storeFailed(ctx, domain, err, calls, owners, verdicts)
	}
	refused := false
	var failedCalls []algorithms.Request
	var failedOwners []int
	for k, i := range owners {
		v := &verdicts[i]
		if partial != nil && partial.Failed[k] != nil {
			failedCalls, failedOwners = append(failedCalls, calls[k]), append(failedOwners, i)
			continue
		}
		v.result = results[k]
		v.grade = gradeOf(v.limit, v.result)
		if v.grade.Refused() {
			if v.limit.ShadowMode {
				v.shadow = true
			} else {
				refused = true
			}
		}
	}
	if len(failedOwners) > 0 {
		// Some shards answered, others failed: the failed descriptors follow their failure
		// modes; if that fails the request, what the others were charged is given back.
		if ferr := s.storeFailed(ctx, domain, err, failedCalls, failedOwners, verdicts); ferr != nil {
			if !opts.dryRun {
				s.refund(ctx, domain, calls, owners, verdicts, charged, roundTrip)
			}
			return ferr
		}
		for _, i := range failedOwners {
			if verdicts[i].grade.Refused() && !verdicts[i].shadow {
				refused = true
			}
		}
	}
	if refused && !opts.dryRun {
		s.refund(ctx, domain, calls, owners, verdicts, charged, roundTrip)
	}
	return nil
}

// refund gives back what the admitted descriptors of a refused request were charged. A failed
// refund is logged and counted; the request stays refused, so the error is on the safe side.
//
// A fixed window's refund is given only while the window it was charged in surely lasts:
// decided by the replica's own elapsed time since the charge was sent plus one round trip,
// never by comparing clocks. Otherwise the refund would land in the next window and let its
// hits through; a skipped refund errs on the side of refusal.
func (s *Server) refund(ctx context.Context, domain string, calls []algorithms.Request, owners []int, verdicts []verdict, charged time.Time, roundTrip time.Duration) {
	var back []algorithms.Request
	var whose []int
	for k, i := range owners {
		v := &verdicts[i]
		// A degraded descriptor was not charged on the store (failure.go refunds its own).
		if !v.refundable() || v.degraded {
			continue
		}
		if v.limit.Algorithm == config.FixedWindow && time.Since(charged)+roundTrip >= v.result.ResetAfter {
			continue
		}
		c := calls[k]
		c.Hits = -v.hits
		back = append(back, c)
		whose = append(whose, i)
	}
	if len(back) == 0 {
		return
	}
	// The refund must happen even when the caller has gone: it runs on its own deadline.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.storageTimeout)
	defer cancel()
	results, err := s.decide(ctx, "refund", back)
	if err != nil {
		s.log.Warn("refund failed", zap.String("domain", domain), zap.Error(err))
		return
	}
	for k, i := range whose {
		v := &verdicts[i]
		v.result.Remaining = results[k].Remaining
		v.result.ResetAfter = results[k].ResetAfter
		v.grade = gradeOf(v.limit, v.result)
	}
}

// decide runs one batch on the store, bounded by the caller's deadline minus the margin (or by
// the storage timeout when the caller has none).
func (s *Server) decide(ctx context.Context, op string, calls []algorithms.Request) ([]algorithms.Result, error) {
	timeout := s.storageTimeout
	if deadline, ok := ctx.Deadline(); ok {
		if left := time.Until(deadline) - s.margin; left < timeout {
			timeout = max(left, time.Millisecond)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	results, err := s.decider.Decide(ctx, calls)
	m := s.metrics.storage[op]
	m.seconds.Observe(time.Since(start).Seconds())
	if err != nil {
		m.errors.Inc()
		if partial := (*algorithms.PartialError)(nil); errors.As(err, &partial) && len(results) == len(calls) {
			return results, err // the calls it does not list ran
		}
		return nil, err
	}
	if len(results) != len(calls) {
		m.errors.Inc()
		return nil, fmt.Errorf("%d results for %d calls", len(results), len(calls))
	}
	return results, nil
}

// respond assembles Envoy's response and returns the request's overall grade.
func (s *Server) respond(verdicts []verdict) (*rlsv3.RateLimitResponse, Grade) {
	resp := &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OK,
		Statuses:    make([]*rlsv3.RateLimitResponse_DescriptorStatus, len(verdicts)),
	}
	overall := GradeOK
	limited := false
	for i := range verdicts {
		v := &verdicts[i]
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK}
		resp.Statuses[i] = st
		switch {
		case v.limit == nil:
			continue
		case v.limit.Unlimited:
			st.LimitRemaining = math.MaxUint32
			continue
		}
		limited = true
		st.CurrentLimit = currentLimit(v.limit)
		st.DurationUntilReset = durationpb.New(v.result.ResetAfter)
		if !v.grade.Refused() {
			st.LimitRemaining = clampUint32(v.result.Remaining)
		}
		if v.grade.Refused() && !v.shadow {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		if !v.limit.ShadowMode && v.grade > overall { // shadow limits never grade the request
			overall = v.grade
		}
	}
	if limited {
		resp.ResponseHeadersToAdd = s.responseHeaders(verdicts, overall)
		if overall == GradeNearLimit && s.headers.NearLimitName != "-" {
			resp.RequestHeadersToAdd = []*corev3.HeaderValue{{Key: s.headers.NearLimitName, Value: s.headers.NearLimitValue}}
		}
		resp.DynamicMetadata = metadata(verdicts, overall)
	}
	return resp, overall
}

func currentLimit(l *config.Limit) *rlsv3.RateLimitResponse_RateLimit {
	cl := &rlsv3.RateLimitResponse_RateLimit{
		Name:            l.Name,
		RequestsPerUnit: l.RequestsPerUnit,
		Unit:            rlsv3.RateLimitResponse_RateLimit_Unit(l.Unit),
	}
	if l.UnitMultiplier > 1 {
		cl.UnitMultiplier = wrapperspb.UInt32(l.UnitMultiplier)
	}
	return cl
}

func clampUint32(n int64) uint32 {
	switch {
	case n < 0:
		return 0
	case n > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(n)
}
