package server

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
)

// DegradedRetryAfter is the retry-after of a request refused by failure_mode deny: the store
// gave no answer, so there is no exact time to come back; one second keeps callers from
// hammering a failing store while it recovers.
const DegradedRetryAfter = time.Second

// failureModes are the failure modes counted by ratelimitd_degraded_decisions_total.
var failureModes = []config.FailureMode{config.FailAllow, config.FailDeny, config.FailLocal}

// storeFailed answers a request whose batch of decisions failed on the store (err), following
// the failure modes of its limited descriptors (calls[k] is the call of verdicts[owners[k]]):
//
//   - when any of them says error (the default), the request fails with UNAVAILABLE, so the
//     caller's own policy decides (Envoy's failure_mode_deny);
//   - otherwise each descriptor gets its mode's answer, flagged degraded: allow admits it
//     (graded ok, remaining reported as the whole limit, since nothing was counted); deny
//     refuses it as over the limit with DegradedRetryAfter; local decides it with the same
//     algorithm on a process-local store at the rule's rate divided by the replica count.
//
// A request refused by one descriptor refunds what local descriptors were charged, as run
// does for the store.
func (s *Server) storeFailed(ctx context.Context, domain string, err error, calls []algorithms.Request, owners []int, verdicts []verdict) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return status.FromContextError(ctxErr).Err()
	}
	s.log.Warn("storage failed", zap.String("domain", domain), zap.Error(err))
	for _, i := range owners {
		mode := verdicts[i].limit.FailureMode
		if mode == config.FailError || mode == "" || (mode == config.FailLocal && s.local == nil) {
			// The details (addresses, server messages) go to the log, not to callers.
			if errors.Is(err, context.DeadlineExceeded) {
				return status.Error(codes.Unavailable, "storage unavailable: no answer within the deadline")
			}
			return status.Error(codes.Unavailable, "storage unavailable")
		}
	}
	var local []algorithms.Request
	var localOwners []int
	for k, i := range owners {
		v := &verdicts[i]
		v.degraded = true
		quota, _ := ruleQuota(v.limit)
		switch v.limit.FailureMode {
		case config.FailAllow:
			v.result = algorithms.Result{Allowed: true, Limit: quota, Remaining: quota}
			v.grade = GradeOK
		case config.FailDeny:
			v.result = algorithms.Result{Limit: quota, ResetAfter: DegradedRetryAfter, RetryAfter: DegradedRetryAfter}
			v.grade = GradeOverLimit
		case config.FailLocal:
			local = append(local, s.localCall(calls[k]))
			localOwners = append(localOwners, i)
		}
	}
	if len(local) > 0 {
		results, lerr := s.local.Decide(ctx, local)
		if lerr != nil {
			// The local store fails only on a request it cannot run, which the store
			// accepted: answer as the error mode does.
			s.log.Error("local failure mode failed", zap.String("domain", domain), zap.Error(lerr))
			return status.Error(codes.Unavailable, "storage unavailable")
		}
		for k, i := range localOwners {
			verdicts[i].result = results[k]
			verdicts[i].grade = gradeOf(verdicts[i].limit, results[k])
		}
	}
	refused := false
	for _, i := range owners {
		v := &verdicts[i]
		s.metrics.degraded[v.limit.FailureMode].Inc()
		if v.grade.Refused() {
			if v.limit.ShadowMode {
				v.shadow = true
			} else {
				refused = true
			}
		}
	}
	if refused && len(local) > 0 && !local[0].DryRun {
		s.refundLocal(ctx, domain, local, localOwners, verdicts)
	}
	return nil
}

// localCall is call as failure_mode local runs it: the rule's rate (and a token bucket's
// burst) divided by the replica count, rounded down but at least 1, so that the replicas
// together admit no more than the rule while each still admits some.
func (s *Server) localCall(call algorithms.Request) algorithms.Request {
	n := int64(s.replicas)
	if call.Limit > 0 {
		call.Limit = max(call.Limit/n, 1)
	}
	if call.Burst > 0 {
		call.Burst = max(call.Burst/n, 1)
	}
	return call
}

// refundLocal gives back what the admitted local descriptors of a refused request were
// charged.
func (s *Server) refundLocal(ctx context.Context, domain string, local []algorithms.Request, owners []int, verdicts []verdict) {
	var back []algorithms.Request
	for k, i := range owners {
		v := &verdicts[i]
		if !v.refundable() {
			continue
		}
		c := local[k]
		c.Hits = -v.hits
		back = append(back, c)
	}
	if len(back) == 0 {
		return
	}
	if _, err := s.local.Decide(context.WithoutCancel(ctx), back); err != nil {
		s.log.Warn("local refund failed", zap.String("domain", domain), zap.Error(err))
	}
}
