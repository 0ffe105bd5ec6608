package server

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// TestNativeDryRun: a dry run answers what the same request would be answered, and charges
// nothing.
func TestNativeDryRun(t *testing.T) {
	h := newHarness(t, Options{})
	for i, ds := range [][]*ratelimitdv1.Descriptor{
		{nd("fw", "dry"), nd("tb", "dry")},
		{nd("fw", "dry"), nd("tb", "dry")},
		{nd("fw", "dry"), nd("tb", "dry")}, // the token bucket's burst of 2 is spent
		{nd("fw", "dry")},
		{nd("fw", "dry")},
		{nd("fw", "dry")}, // the 4 of fw are spent (the refusal above was refunded)
	} {
		req := &ratelimitdv1.CheckRequest{Domain: "d", Descriptors: ds}
		dry := proto.Clone(req).(*ratelimitdv1.CheckRequest)
		dry.DryRun = true
		var answers [3]*ratelimitdv1.CheckResponse
		for k, r := range []*ratelimitdv1.CheckRequest{dry, dry, req} {
			resp, err := h.native.Check(context.Background(), r)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			answers[k] = resp
		}
		if !answers[2].GetAllowed() {
			// A refused request refunds its admitted descriptors; a dry run charges and
			// refunds nothing, so they report what would remain had they been charged.
			for _, a := range answers {
				for _, d := range a.GetDescriptors() {
					d.Remaining = 0
				}
			}
		}
		if !proto.Equal(answers[0], answers[2]) || !proto.Equal(answers[1], answers[2]) {
			t.Errorf("request %d: dry runs %v / %v, want the real answer %v", i, answers[0], answers[1], answers[2])
		}
	}
}
