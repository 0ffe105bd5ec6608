package client_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ratelimitd/ratelimitd/client"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// details splits a status's details by type.
func details(st *status.Status) (ri *errdetails.RetryInfo, qf *errdetails.QuotaFailure, ei *errdetails.ErrorInfo) {
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			ri = d
		case *errdetails.QuotaFailure:
			qf = d
		case *errdetails.ErrorInfo:
			ei = d
		}
	}
	return ri, qf, ei
}

func TestRefusalStatusRoundTrip(t *testing.T) {
	req := &ratelimitdv1.CheckRequest{Domain: "shop", Descriptors: []*ratelimitdv1.Descriptor{
		{Entries: []*ratelimitdv1.Entry{{Key: "user", Value: "alice"}}},
		{Entries: []*ratelimitdv1.Entry{{Key: "api", Value: "search"}, {Key: "priority", Value: "low"}}},
	}}
	ok := &ratelimitdv1.DescriptorResult{Grade: ratelimitdv1.Grade_GRADE_OK, Allowed: true, Limited: true, Limit: 10, Remaining: 9}
	refused := func(g ratelimitdv1.Grade, retry time.Duration) *ratelimitdv1.DescriptorResult {
		r := &ratelimitdv1.DescriptorResult{Grade: g, Limited: true, Name: "r", Limit: 5}
		if g != ratelimitdv1.Grade_GRADE_NEVER {
			r.RetryAfter = durationpb.New(retry)
		}
		return r
	}
	tests := []struct {
		name        string
		resp        *ratelimitdv1.CheckResponse
		code        codes.Code
		retry       time.Duration // -1: no RetryInfo
		pushback    string
		subjects    []string
		description string
	}{
		{
			name: "over limit",
			resp: &ratelimitdv1.CheckResponse{Grade: ratelimitdv1.Grade_GRADE_OVER_LIMIT, RetryAfter: durationpb.New(2500 * time.Millisecond),
				Descriptors: []*ratelimitdv1.DescriptorResult{refused(ratelimitdv1.Grade_GRADE_OVER_LIMIT, 2500*time.Millisecond), ok}},
			code: codes.ResourceExhausted, retry: 2500 * time.Millisecond, pushback: "2500",
			subjects: []string{"shop/user=alice"}, description: `OVER_LIMIT: rule "r" limit 5, remaining 0, retry after 2.5s`,
		},
		{
			name: "shed",
			resp: &ratelimitdv1.CheckResponse{Grade: ratelimitdv1.Grade_GRADE_SHED, RetryAfter: durationpb.New(1500 * time.Microsecond),
				Descriptors: []*ratelimitdv1.DescriptorResult{ok, refused(ratelimitdv1.Grade_GRADE_SHED, 1500*time.Microsecond)}},
			code: codes.Unavailable, retry: 1500 * time.Microsecond, pushback: "2",
			subjects: []string{"shop/api=search/priority=low"}, description: "SHED",
		},
		{
			name: "shed and over limit",
			resp: &ratelimitdv1.CheckResponse{Grade: ratelimitdv1.Grade_GRADE_OVER_LIMIT, RetryAfter: durationpb.New(3 * time.Second),
				Descriptors: []*ratelimitdv1.DescriptorResult{refused(ratelimitdv1.Grade_GRADE_OVER_LIMIT, time.Second), refused(ratelimitdv1.Grade_GRADE_SHED, 3*time.Second)}},
			code: codes.ResourceExhausted, retry: 3 * time.Second, pushback: "3000",
			subjects: []string{"shop/user=alice", "shop/api=search/priority=low"}, description: "OVER_LIMIT",
		},
		{
			name: "never",
			resp: &ratelimitdv1.CheckResponse{Grade: ratelimitdv1.Grade_GRADE_NEVER,
				Descriptors: []*ratelimitdv1.DescriptorResult{refused(ratelimitdv1.Grade_GRADE_NEVER, 0), refused(ratelimitdv1.Grade_GRADE_OVER_LIMIT, time.Minute)}},
			code: codes.ResourceExhausted, retry: -1, pushback: "-1",
			subjects: []string{"shop/user=alice", "shop/api=search/priority=low"}, description: `NEVER: rule "r" limit 5, remaining 0`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := client.RefusalStatus(req, tt.resp)
			if st == nil {
				t.Fatal("RefusalStatus = nil, want a refusal")
			}
			if st.Code() != tt.code {
				t.Errorf("code = %v, want %v", st.Code(), tt.code)
			}
			ri, qf, ei := details(st)
			switch {
			case tt.retry < 0 && ri != nil:
				t.Errorf("RetryInfo = %v, want none", ri)
			case tt.retry >= 0 && (ri == nil || ri.GetRetryDelay().AsDuration() != tt.retry):
				t.Errorf("RetryInfo = %v, want %v", ri, tt.retry)
			}
			var subjects []string
			for _, v := range qf.GetViolations() {
				subjects = append(subjects, v.GetSubject())
			}
			if fmt.Sprint(subjects) != fmt.Sprint(tt.subjects) {
				t.Errorf("QuotaFailure subjects = %q, want %q", subjects, tt.subjects)
			}
			if d := qf.GetViolations()[0].GetDescription(); !strings.HasPrefix(d, tt.description) {
				t.Errorf("description = %q, want it to start with %q", d, tt.description)
			}
			if ei.GetDomain() != client.ErrorDomain {
				t.Errorf("ErrorInfo = %v, want domain %q", ei, client.ErrorDomain)
			}
			tr := client.PushbackTrailer(st)
			if got := tr.Get(client.PushbackKey); len(got) != 1 || got[0] != tt.pushback {
				t.Errorf("pushback = %q, want %q", got, tt.pushback)
			}

			// Back from the error alone, from the trailer alone, and from both.
			wantDelay, wantNever := tt.retry, tt.retry < 0
			if wantNever {
				wantDelay = 0
			}
			check := func(what string, delay time.Duration, never, ok bool) {
				t.Helper()
				if !ok || never != wantNever || delay != wantDelay {
					t.Errorf("RetryHint(%s) = %v, %v, %v; want %v, %v, true", what, delay, never, ok, wantDelay, wantNever)
				}
			}
			delay, never, hok := client.RetryHint(st.Err())
			check("error", delay, never, hok)
			delay, never, hok = client.RetryHint(fmt.Errorf("call shop: %w", st.Err()))
			check("wrapped error", delay, never, hok)
			bare := status.Error(tt.code, "refused")
			if _, _, hok := client.RetryHint(bare); hok {
				t.Errorf("RetryHint(no details, no trailer) ok, want no hint")
			}
			delay, never, hok = client.RetryHint(bare, tr)
			if tt.pushback == "2" {
				wantDelay = 2 * time.Millisecond // the pushback is whole milliseconds
			}
			check("trailer", delay, never, hok)
			delay, never, hok = client.RetryHint(st.Err(), tr)
			check("error and trailer", delay, never, hok)
		})
	}
	if st := client.RefusalStatus(req, &ratelimitdv1.CheckResponse{Grade: ratelimitdv1.Grade_GRADE_NEAR_LIMIT, Allowed: true}); st != nil {
		t.Errorf("RefusalStatus(allowed) = %v, want nil", st)
	}
}

func TestRetryHint(t *testing.T) {
	withRetry := func(code codes.Code, d time.Duration) error {
		st, err := status.New(code, "x").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	pushback := func(v ...string) metadata.MD {
		md := metadata.MD{}
		for _, s := range v {
			md.Append(client.PushbackKey, s)
		}
		return md
	}
	tests := []struct {
		name    string
		err     error
		trailer metadata.MD
		delay   time.Duration
		never   bool
		ok      bool
	}{
		{name: "nil", err: nil},
		{name: "not a status", err: errors.New("boom")},
		{name: "other code with RetryInfo", err: withRetry(codes.Internal, time.Second), trailer: pushback("100")},
		{name: "unavailable without hint", err: status.Error(codes.Unavailable, "connection refused")},
		{name: "RetryInfo", err: withRetry(codes.ResourceExhausted, 3*time.Second), delay: 3 * time.Second, ok: true},
		{name: "RetryInfo on unavailable", err: withRetry(codes.Unavailable, time.Second), delay: time.Second, ok: true},
		{name: "pushback", err: status.Error(codes.ResourceExhausted, "x"), trailer: pushback("1500"), delay: 1500 * time.Millisecond, ok: true},
		{name: "pushback never", err: status.Error(codes.Unavailable, "x"), trailer: pushback("-1"), never: true, ok: true},
		{name: "never beats RetryInfo", err: withRetry(codes.ResourceExhausted, time.Second), trailer: pushback("-1"), never: true, ok: true},
		{name: "longer of RetryInfo and pushback", err: withRetry(codes.ResourceExhausted, 2*time.Second), trailer: pushback("3000"), delay: 3 * time.Second, ok: true},
		{name: "malformed pushback ignored", err: status.Error(codes.ResourceExhausted, "x"), trailer: pushback("soon")},
		{name: "malformed pushback beside a good one", err: status.Error(codes.ResourceExhausted, "x"), trailer: pushback("soon", "20"), delay: 20 * time.Millisecond, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			delay, never, ok := client.RetryHint(tt.err, tt.trailer)
			if delay != tt.delay || never != tt.never || ok != tt.ok {
				t.Errorf("RetryHint = %v, %v, %v; want %v, %v, %v", delay, never, ok, tt.delay, tt.never, tt.ok)
			}
		})
	}
}
