package client

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// PushbackKey is the trailer in which gRPC servers tell clients when to retry, in
// milliseconds; a negative value means do not retry (gRFC A6).
const PushbackKey = "grpc-retry-pushback-ms"

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail of every refusal; its reason
// is the grade: "OVER_LIMIT", "SHED" or "NEVER".
const ErrorDomain = "ratelimitd"

// Reasons of the ErrorInfo detail.
const (
	reasonOverLimit = "OVER_LIMIT"
	reasonShed      = "SHED"
	reasonNever     = "NEVER"
)

// hint is a refusal's advice: come back after delay, or never.
type hint struct {
	code  codes.Code // ResourceExhausted or Unavailable
	delay time.Duration
	never bool
}

// merge returns the advice that satisfies both: never wins, then the longer delay. The code
// is UNAVAILABLE only when both are (a shed combined with a spent limit is a spent limit).
func (h hint) merge(o hint) hint {
	out := hint{code: codes.ResourceExhausted, delay: max(h.delay, o.delay), never: h.never || o.never}
	if h.code == codes.Unavailable && o.code == codes.Unavailable {
		out.code = codes.Unavailable
	}
	if out.never {
		out.delay = 0
	}
	return out
}

func (h hint) reason() string {
	switch {
	case h.never:
		return reasonNever
	case h.code == codes.Unavailable:
		return reasonShed
	}
	return reasonOverLimit
}

// pushback is the value of the grpc-retry-pushback-ms trailer for h.
func (h hint) pushback() string {
	if h.never {
		return "-1"
	}
	return strconv.FormatInt(ceilMillis(h.delay), 10)
}

// RefusalStatus returns the gRPC status that refuses a request ratelimitd refused, or nil
// when resp admits it: RESOURCE_EXHAUSTED for OVER_LIMIT and NEVER, UNAVAILABLE for SHED,
// with the details
//
//   - google.rpc.RetryInfo: retry_delay is the response's retry-after; absent for NEVER;
//   - google.rpc.QuotaFailure: one violation per refusing descriptor, its subject
//     "domain/key=value/key=value" and its description the grade, the rule's name and limit;
//   - google.rpc.ErrorInfo: domain "ratelimitd", reason the grade ("OVER_LIMIT", "SHED",
//     "NEVER"), so that NEVER survives where the trailer does not.
//
// Send [PushbackTrailer] of the status as the call's trailer (the interceptors do).
func RefusalStatus(req *ratelimitdv1.CheckRequest, resp *ratelimitdv1.CheckResponse) *status.Status {
	if resp.GetAllowed() {
		return nil
	}
	h := hintOfResponse(resp)
	var violations []*errdetails.QuotaFailure_Violation
	for i, d := range resp.GetDescriptors() {
		if d.GetAllowed() || d.GetGrade() < ratelimitdv1.Grade_GRADE_SHED {
			continue
		}
		var entries []*ratelimitdv1.Entry
		if i < len(req.GetDescriptors()) {
			entries = req.GetDescriptors()[i].GetEntries()
		}
		violations = append(violations, &errdetails.QuotaFailure_Violation{
			Subject:     Subject(req.GetDomain(), entries),
			Description: describe(d),
		})
	}
	msg := "rate limit exceeded"
	switch {
	case h.never:
		msg = "rate limit exceeded: the request can never fit the limit"
	case h.code == codes.Unavailable:
		msg = "request shed to keep capacity for others"
	}
	return refusal(h, msg, violations)
}

// refusal builds the status of a refusal: its RetryInfo (unless never), QuotaFailure (when
// there are violations), ErrorInfo, then the details in extra as they are.
func refusal(h hint, msg string, violations []*errdetails.QuotaFailure_Violation, extra ...*anypb.Any) *status.Status {
	details := []proto.Message{}
	if !h.never {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(h.delay)})
	}
	if len(violations) > 0 {
		details = append(details, &errdetails.QuotaFailure{Violations: violations})
	}
	details = append(details, &errdetails.ErrorInfo{Domain: ErrorDomain, Reason: h.reason()})
	p := &spb.Status{Code: int32(h.code), Message: msg}
	for _, d := range details {
		a, err := anypb.New(d)
		if err != nil {
			continue // cannot happen: these messages always marshal
		}
		p.Details = append(p.Details, a)
	}
	p.Details = append(p.Details, extra...)
	return status.FromProto(p)
}

// hintOfResponse is the advice of a refusing response: NEVER if any descriptor (or the
// request) can never pass, SHED (UNAVAILABLE) when every refusing descriptor shed it, and
// the longest retry-after.
func hintOfResponse(resp *ratelimitdv1.CheckResponse) hint {
	h := hint{code: codes.ResourceExhausted, delay: resp.GetRetryAfter().AsDuration()}
	grade := resp.GetGrade()
	for _, d := range resp.GetDescriptors() {
		if d.GetAllowed() {
			continue
		}
		grade = max(grade, d.GetGrade())
		h.delay = max(h.delay, d.GetRetryAfter().AsDuration())
	}
	switch grade {
	case ratelimitdv1.Grade_GRADE_NEVER:
		return hint{code: codes.ResourceExhausted, never: true}
	case ratelimitdv1.Grade_GRADE_SHED:
		h.code = codes.Unavailable
	}
	h.delay = max(h.delay, 0)
	return h
}

// Subject names a descriptor as "domain/key=value/key=value", the shape of the descriptor
// paths in ratelimitd's logs.
func Subject(domain string, entries []*ratelimitdv1.Entry) string {
	var b strings.Builder
	b.WriteString(domain)
	for _, e := range entries {
		b.WriteByte('/')
		b.WriteString(e.GetKey())
		if e.GetValue() != "" {
			b.WriteByte('=')
			b.WriteString(e.GetValue())
		}
	}
	return b.String()
}

// describe says how a descriptor refused: its grade, then its rule's name and limit.
func describe(d *ratelimitdv1.DescriptorResult) string {
	var b strings.Builder
	b.WriteString(strings.TrimPrefix(d.GetGrade().String(), "GRADE_"))
	if d.GetName() != "" {
		fmt.Fprintf(&b, ": rule %q", d.GetName())
	} else {
		b.WriteString(":")
	}
	fmt.Fprintf(&b, " limit %d, remaining %d", d.GetLimit(), d.GetRemaining())
	if ra := d.GetRetryAfter(); ra != nil && d.GetGrade() != ratelimitdv1.Grade_GRADE_NEVER {
		fmt.Fprintf(&b, ", retry after %v", ra.AsDuration())
	}
	return b.String()
}

// PushbackTrailer returns the grpc-retry-pushback-ms trailer that goes with a refusal: its
// RetryInfo delay in milliseconds (rounded up), or "-1" when it can never pass. It returns
// nil for a status that carries no retry hint.
func PushbackTrailer(st *status.Status) metadata.MD {
	h, ok := hintOfStatus(st)
	if !ok {
		return nil
	}
	return metadata.Pairs(PushbackKey, h.pushback())
}

// RetryHint reads the retry advice of a failed call: from the google.rpc.RetryInfo (and
// ErrorInfo) details of err's status, and from the grpc-retry-pushback-ms value of trailers,
// if given. ok is true only for RESOURCE_EXHAUSTED and UNAVAILABLE errors that carry such a
// hint; never is true when the call must not be retried (pushback negative, or ErrorInfo
// reason "NEVER"), and delay is then 0. With both a RetryInfo and a pushback, the longer
// delay is returned.
func RetryHint(err error, trailers ...metadata.MD) (delay time.Duration, never bool, ok bool) {
	h, ok := hintOf(err, trailers...)
	return h.delay, h.never, ok
}

// hintOf is RetryHint's advice with the code of err.
func hintOf(err error, trailers ...metadata.MD) (hint, bool) {
	if err == nil {
		return hint{}, false
	}
	st, isStatus := status.FromError(err)
	if !isStatus {
		return hint{}, false
	}
	h, ok := hintOfStatus(st)
	if h.code != codes.ResourceExhausted && h.code != codes.Unavailable {
		return hint{}, false
	}
	for _, md := range trailers {
		for _, v := range md.Get(PushbackKey) {
			ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch {
			case err != nil:
				continue
			case ms < 0:
				h.never, h.delay = true, 0
			case !h.never:
				h.delay = max(h.delay, time.Duration(min(ms, math.MaxInt64/int64(time.Millisecond)))*time.Millisecond)
			}
			ok = true
		}
	}
	return h, ok
}

// hintOfStatus reads RetryInfo and ErrorInfo from st.
func hintOfStatus(st *status.Status) (hint, bool) {
	h := hint{code: st.Code()}
	if h.code != codes.ResourceExhausted && h.code != codes.Unavailable {
		return h, false
	}
	ok := false
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			if !h.never {
				h.delay = max(h.delay, d.GetRetryDelay().AsDuration())
			}
			ok = true
		case *errdetails.ErrorInfo:
			if d.GetDomain() == ErrorDomain && d.GetReason() == reasonNever {
				h.never, h.delay, ok = true, 0, true
			}
		}
	}
	return h, ok
}

// ceilMillis rounds d up to whole milliseconds.
func ceilMillis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
