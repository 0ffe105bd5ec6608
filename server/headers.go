package server

import (
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ratelimitd/ratelimitd/config"
)

// responseHeaders builds the headers Envoy adds to the response to its client:
//
//   - RateLimit-Policy and RateLimit, one list member per limited descriptor, in the syntax of
//     the IETF httpapi rate-limit headers draft: `"name";q=<quota>;w=<window s>` and
//     `"name";r=<remaining>;t=<seconds until reset>` (a token bucket's quota is its burst, and
//     its window the time to refill the burst);
//   - Retry-After, in whole seconds rounded up (at least 1), when the request is refused (over
//     limit or shed) and could pass later; never when a descriptor's cost can never fit (grade
//     never);
//   - optionally X-RateLimit-Limit, -Remaining and -Reset of the most restrictive descriptor.
func (s *Server) responseHeaders(verdicts []verdict, overall Grade) []*corev3.HeaderValue {
	var policy, state strings.Builder
	var retry time.Duration
	tightest := -1
	for i := range verdicts {
		v := &verdicts[i]
		// Shadow-mode limits are not enforced, so clients are not told about them.
		if !v.limited() || v.limit.ShadowMode {
			continue
		}
		if policy.Len() > 0 {
			policy.WriteString(", ")
			state.WriteString(", ")
		}
		name := policyName(v, i)
		remaining := remainingOf(v)
		quota, window := policyOf(v)
		policy.WriteString(name)
		policy.WriteString(";q=")
		policy.WriteString(strconv.FormatInt(quota, 10))
		policy.WriteString(";w=")
		policy.WriteString(strconv.FormatInt(max(ceilSeconds(window), 1), 10))
		state.WriteString(name)
		state.WriteString(";r=")
		state.WriteString(strconv.FormatInt(remaining, 10))
		state.WriteString(";t=")
		state.WriteString(strconv.FormatInt(ceilSeconds(v.result.ResetAfter), 10))
		if v.grade.Refused() && !v.shadow && v.result.RetryAfter > retry {
			retry = v.result.RetryAfter
		}
		if tightest < 0 || remaining < remainingOf(&verdicts[tightest]) {
			tightest = i
		}
	}
	var hs []*corev3.HeaderValue
	if policy.Len() > 0 {
		hs = append(hs,
			&corev3.HeaderValue{Key: "RateLimit-Policy", Value: policy.String()},
			&corev3.HeaderValue{Key: "RateLimit", Value: state.String()})
	}
	if overall == GradeOverLimit || overall == GradeShed {
		hs = append(hs, &corev3.HeaderValue{Key: "Retry-After", Value: strconv.FormatInt(max(ceilSeconds(retry), 1), 10)})
	}
	if s.headers.XRateLimit && tightest >= 0 {
		v := &verdicts[tightest]
		quota, _ := policyOf(v)
		hs = append(hs,
			&corev3.HeaderValue{Key: "X-RateLimit-Limit", Value: strconv.FormatInt(quota, 10)},
			&corev3.HeaderValue{Key: "X-RateLimit-Remaining", Value: strconv.FormatInt(remainingOf(v), 10)},
			&corev3.HeaderValue{Key: "X-RateLimit-Reset", Value: strconv.FormatInt(ceilSeconds(v.result.ResetAfter), 10)},
		)
	}
	return hs
}

// policyOf is the quota a verdict's client may spend at once and the time it takes to come
// back: the rule's (see ruleQuota), except that a priority class has its own share of it.
func policyOf(v *verdict) (quota int64, window time.Duration) {
	if v.limit.Algorithm == config.Priority && v.result.Limit > 0 {
		return v.result.Limit, v.limit.Window
	}
	return ruleQuota(v.limit)
}

// ruleQuota is a rule's quota and window: the limit per window, or for a token bucket its
// burst and the time to refill the whole burst.
func ruleQuota(l *config.Limit) (quota int64, window time.Duration) {
	if l.Algorithm == config.TokenBucket && l.RequestsPerUnit > 0 {
		return int64(l.Burst), time.Duration(int64(l.Window) / int64(l.RequestsPerUnit) * int64(l.Burst))
	}
	return int64(l.RequestsPerUnit), l.Window
}

// remainingOf is what a descriptor reports as remaining: nothing once it refused.
func remainingOf(v *verdict) int64 {
	if v.grade.Refused() {
		return 0
	}
	return int64(clampUint32(v.result.Remaining))
}

// policyName is the quoted structured-field string naming a descriptor's policy: the rule's
// name, else its descriptor path. Characters a structured-field string cannot hold become '_'.
func policyName(v *verdict, i int) string {
	name := v.limit.Name
	if name == "" {
		name = v.limit.Path
	}
	if name == "" {
		name = "descriptor-" + strconv.Itoa(i)
	}
	var b strings.Builder
	b.Grow(len(name) + 2)
	b.WriteByte('"')
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('_')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// memberNoun names what the last descriptor entry's value is to a priority or fair_share rule.
func memberNoun(a config.Algorithm) string {
	if a == config.Priority {
		return "class"
	}
	return "tenant"
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// metadata is the dynamic metadata of a response: the overall grade and one entry per request
// descriptor, so Envoy access logs and routing can use them.
func metadata(verdicts []verdict, overall Grade) *structpb.Struct {
	list := make([]*structpb.Value, len(verdicts))
	shadowed, degraded := false, false
	for i := range verdicts {
		v := &verdicts[i]
		f := map[string]*structpb.Value{"grade": structpb.NewStringValue(v.grade.String())}
		switch {
		case v.limit == nil:
			f["limited"] = structpb.NewBoolValue(false)
		case v.limit.Unlimited:
			f["limited"] = structpb.NewBoolValue(false)
			f["unlimited"] = structpb.NewBoolValue(true)
		default:
			f["limited"] = structpb.NewBoolValue(true)
			quota, _ := policyOf(v)
			f["limit"] = structpb.NewNumberValue(float64(quota))
			f["remaining"] = structpb.NewNumberValue(float64(remainingOf(v)))
			f["reset_after_ms"] = structpb.NewNumberValue(float64(v.result.ResetAfter.Milliseconds()))
			f["algorithm"] = structpb.NewStringValue(string(v.limit.Algorithm))
			if v.grade.Refused() && v.grade != GradeNever {
				f["retry_after_ms"] = structpb.NewNumberValue(float64(v.result.RetryAfter.Milliseconds()))
			}
			if v.limit.Name != "" {
				f["name"] = structpb.NewStringValue(v.limit.Name)
			}
			if v.member != "" {
				// The class the request was counted in (an unknown value falls back to the
				// default class), or the tenant.
				f[memberNoun(v.limit.Algorithm)] = structpb.NewStringValue(v.member)
			}
			if v.shadow {
				f["shadow"] = structpb.NewBoolValue(true)
				shadowed = true
			}
			if v.degraded {
				// Answered by the rule's failure mode while the store failed.
				f["degraded"] = structpb.NewBoolValue(true)
				f["failure_mode"] = structpb.NewStringValue(string(v.limit.FailureMode))
				degraded = true
			}
		}
		list[i] = structpb.NewStructValue(&structpb.Struct{Fields: f})
	}
	top := map[string]*structpb.Value{
		"grade":       structpb.NewStringValue(overall.String()),
		"descriptors": structpb.NewListValue(&structpb.ListValue{Values: list}),
	}
	if shadowed {
		top["shadow"] = structpb.NewBoolValue(true)
	}
	if degraded {
		top["degraded"] = structpb.NewBoolValue(true)
	}
	return &structpb.Struct{Fields: top}
}
