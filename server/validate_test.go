package server

import (
	"strings"
	"testing"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestValidateRequest(t *testing.T) {
	good := func() *rlsv3.RateLimitRequest {
		return &rlsv3.RateLimitRequest{Domain: "d", Descriptors: []*ratelimitv3.RateLimitDescriptor{{Entries: entries("k", "v")}}}
	}
	tests := []struct {
		name   string
		change func(r *rlsv3.RateLimitRequest)
		field  string // empty: valid
	}{
		{"valid", func(*rlsv3.RateLimitRequest) {}, ""},
		{"empty value is valid", func(r *rlsv3.RateLimitRequest) { r.Descriptors[0].Entries[0].Value = "" }, ""},
		{"64 descriptors", func(r *rlsv3.RateLimitRequest) {
			for len(r.Descriptors) < MaxDescriptors {
				r.Descriptors = append(r.Descriptors, r.Descriptors[0])
			}
		}, ""},
		{"empty domain", func(r *rlsv3.RateLimitRequest) { r.Domain = "" }, "domain"},
		{"no descriptors", func(r *rlsv3.RateLimitRequest) { r.Descriptors = nil }, "descriptors"},
		{"65 descriptors", func(r *rlsv3.RateLimitRequest) {
			for len(r.Descriptors) <= MaxDescriptors {
				r.Descriptors = append(r.Descriptors, r.Descriptors[0])
			}
		}, "descriptors"},
		{"65 entries", func(r *rlsv3.RateLimitRequest) {
			for len(r.Descriptors[0].Entries) <= MaxEntries {
				r.Descriptors[0].Entries = append(r.Descriptors[0].Entries, r.Descriptors[0].Entries[0])
			}
		}, "descriptors[0].entries"},
		{"nil descriptor", func(r *rlsv3.RateLimitRequest) { r.Descriptors = append(r.Descriptors, nil) }, "descriptors[1].entries"},
		{"empty key", func(r *rlsv3.RateLimitRequest) { r.Descriptors[0].Entries[0].Key = "" }, "descriptors[0].entries[0].key"},
		{"long key", func(r *rlsv3.RateLimitRequest) {
			r.Descriptors[0].Entries[0].Key = strings.Repeat("k", MaxStringBytes+1)
		}, "descriptors[0].entries[0].key"},
		{"long value", func(r *rlsv3.RateLimitRequest) {
			r.Descriptors[0].Entries[0].Value = strings.Repeat("v", MaxStringBytes+1)
		}, "descriptors[0].entries[0].value"},
		{"huge hits", func(r *rlsv3.RateLimitRequest) { r.Descriptors[0].HitsAddend = wrapperspb.UInt64(1 << 40) }, "descriptors[0].hits_addend"},
		{"override unit unknown", func(r *rlsv3.RateLimitRequest) {
			r.Descriptors[0].Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1}
		}, "descriptors[0].limit.unit"},
		{"override multiplier zero", func(r *rlsv3.RateLimitRequest) {
			r.Descriptors[0].Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_SECOND, UnitMultiplier: wrapperspb.UInt32(0)}
		}, "descriptors[0].limit.unit_multiplier"},
		{"override window too long", func(r *rlsv3.RateLimitRequest) {
			r.Descriptors[0].Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_YEAR, UnitMultiplier: wrapperspb.UInt32(1 << 31)}
		}, "descriptors[0].limit.unit_multiplier"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good()
			tt.change(r)
			err := validateRequest(r)
			switch {
			case tt.field == "" && err != nil:
				t.Errorf("validateRequest = %v, want nil", err)
			case tt.field != "" && err == nil:
				t.Errorf("validateRequest = nil, want an error about %s", tt.field)
			case tt.field != "" && !strings.HasPrefix(err.Error(), tt.field+":"):
				t.Errorf("validateRequest = %q, want it to start with %q", err, tt.field+":")
			}
		})
	}
}

// FuzzValidateRequest decodes arbitrary bytes as a request: validation never panics, and a
// request it accepts is one the decision path can take (bounded sizes, a known unit).
func FuzzValidateRequest(f *testing.F) {
	seed, _ := proto.Marshal(&rlsv3.RateLimitRequest{Domain: "d", HitsAddend: 2, Descriptors: []*ratelimitv3.RateLimitDescriptor{
		{Entries: entries("k", "v"), HitsAddend: wrapperspb.UInt64(3), Limit: &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 5, Unit: typev3.RateLimitUnit_MINUTE}},
	}})
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var req rlsv3.RateLimitRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		if validateRequest(&req) != nil {
			return
		}
		for _, d := range req.GetDescriptors() {
			if o := d.GetLimit(); o != nil && overrideUnit(o.GetUnit()).Duration() <= 0 {
				t.Fatalf("accepted an override with unit %v", o.GetUnit())
			}
			if len(d.GetEntries()) == 0 || len(d.GetEntries()) > MaxEntries {
				t.Fatalf("accepted %d entries", len(d.GetEntries()))
			}
		}
	})
}
