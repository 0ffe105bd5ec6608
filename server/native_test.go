package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

func nd(key, value string) *ratelimitdv1.Descriptor {
	return &ratelimitdv1.Descriptor{Entries: []*ratelimitdv1.Entry{{Key: key, Value: value}}}
}

// TestNativeCheck: the native API answers from the same decisions as Envoy's.
func TestNativeCheck(t *testing.T) {
	h := newHarness(t, Options{})
	check := func(req *ratelimitdv1.CheckRequest) *ratelimitdv1.CheckResponse {
		t.Helper()
		resp, err := h.native.Check(context.Background(), req)
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return resp
	}
	resp := check(&ratelimitdv1.CheckRequest{Domain: "d", Cost: 3, Descriptors: []*ratelimitdv1.Descriptor{nd("fw", "n"), nd("nomatch", "n"), nd("open", "n")}})
	if !resp.GetAllowed() || resp.GetGrade() != ratelimitdv1.Grade_GRADE_OK {
		t.Errorf("3 of 4 (below 0.8): allowed %v grade %v, want allowed OK", resp.GetAllowed(), resp.GetGrade())
	}
	got := resp.GetDescriptors()
	if got[0].GetLimit() != 4 || got[0].GetRemaining() != 1 || got[0].GetName() != "four" || !got[0].GetLimited() {
		t.Errorf("fw: %v, want limit 4 remaining 1 named four", got[0])
	}
	if got[1].GetLimited() || got[2].GetLimited() || !got[2].GetUnlimited() {
		t.Errorf("nomatch %v / open %v: want unlimited only for open, neither limited", got[1], got[2])
	}
	// Envoy's API sees the same counter.
	if r := h.call(t, d("fw", "n")); r.GetStatuses()[0].GetLimitRemaining() != 0 {
		t.Errorf("Envoy API after 3 native hits: remaining %d, want 0", r.GetStatuses()[0].GetLimitRemaining())
	}
	resp = check(&ratelimitdv1.CheckRequest{Domain: "d", Descriptors: []*ratelimitdv1.Descriptor{nd("fw", "n")}})
	if resp.GetAllowed() || resp.GetGrade() != ratelimitdv1.Grade_GRADE_OVER_LIMIT || resp.GetRetryAfter().AsDuration() != 50*time.Second {
		t.Errorf("over the limit: %v, want refused OVER_LIMIT with retry-after 50s", resp)
	}
	one := uint64(3)
	resp = check(&ratelimitdv1.CheckRequest{Domain: "d", Descriptors: []*ratelimitdv1.Descriptor{{Entries: nd("tb", "n").GetEntries(), Cost: &one}}})
	if resp.GetGrade() != ratelimitdv1.Grade_GRADE_NEVER || resp.GetRetryAfter() != nil || resp.GetDescriptors()[0].GetRetryAfter() != nil {
		t.Errorf("cost 3 over burst 2: %v, want NEVER without retry-after", resp)
	}
}

func TestNativeCheckBadInput(t *testing.T) {
	h := newHarness(t, Options{})
	big := uint64(1) << 33
	for _, c := range []struct {
		req   *ratelimitdv1.CheckRequest
		field string
	}{
		{&ratelimitdv1.CheckRequest{Descriptors: []*ratelimitdv1.Descriptor{nd("fw", "x")}}, "domain"},
		{&ratelimitdv1.CheckRequest{Domain: "d"}, "descriptors"},
		{&ratelimitdv1.CheckRequest{Domain: "d", Cost: big, Descriptors: []*ratelimitdv1.Descriptor{nd("fw", "x")}}, "cost"},
		{&ratelimitdv1.CheckRequest{Domain: "d", Descriptors: []*ratelimitdv1.Descriptor{{Entries: nd("fw", "x").GetEntries(), Cost: &big}}}, "descriptors[0].cost"},
		{&ratelimitdv1.CheckRequest{Domain: "d", Descriptors: []*ratelimitdv1.Descriptor{nd("", "x")}}, "descriptors[0].entries[0].key"},
		{&ratelimitdv1.CheckRequest{Domain: "d", Tenant: strings.Repeat("t", MaxStringBytes+1), Descriptors: []*ratelimitdv1.Descriptor{nd("fw", "x")}}, "tenant"},
	} {
		_, err := h.native.Check(context.Background(), c.req)
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), c.field+":") {
			t.Errorf("Check(%v) = %v, want InvalidArgument starting with %q", c.req, err, c.field+":")
		}
	}
}
