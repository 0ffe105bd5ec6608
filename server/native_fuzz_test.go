package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
	"github.com/ratelimitd/ratelimitd/storage"
)

// fuzzNative is a native API on the memory store serving sharedConfig and leaseConfig's rules.
func fuzzNative(f *testing.F) *native {
	dir := f.TempDir()
	for name, cfg := range map[string]string{"d.yaml": testConfig, "s.yaml": "domain: s\n" + sharedConfig[len("\ndomain: d\n"):], "l.yaml": "domain: l\n" + leaseConfig[len("\ndomain: d\n"):]} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(cfg), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	set, err := config.Load(dir)
	if err != nil {
		f.Fatal(err)
	}
	s := New(Options{Decider: algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{}))})
	s.SetRules(set)
	return &native{s: s}
}

// FuzzNativeCheckRequest decodes arbitrary bytes as a native Check, Acquire and Release
// request and serves them: nothing panics, every error is INVALID_ARGUMENT, and every answer
// has one result per descriptor.
func FuzzNativeCheckRequest(f *testing.F) {
	n := fuzzNative(f)
	cost := uint64(2)
	for _, m := range []proto.Message{
		&ratelimitdv1.CheckRequest{Domain: "d", Cost: 3, Descriptors: []*ratelimitdv1.Descriptor{nd("fw", "a"), {Entries: nd("tb", "b").GetEntries(), Cost: &cost}}},
		&ratelimitdv1.CheckRequest{Domain: "s", Priority: "critical", Descriptors: []*ratelimitdv1.Descriptor{{Entries: []*ratelimitdv1.Entry{{Key: "api", Value: "checkout"}, {Key: "priority", Value: "x"}}}}},
		&ratelimitdv1.CheckRequest{Domain: "s", Tenant: "big", DryRun: true, Descriptors: []*ratelimitdv1.Descriptor{{Entries: []*ratelimitdv1.Entry{{Key: "pool", Value: "p"}, {Key: "tenant", Value: "t"}}}}},
		&ratelimitdv1.AcquireRequest{Domain: "l", Ttl: durationpb.New(300 * time.Millisecond), Descriptors: []*ratelimitdv1.Descriptor{nd("jobs", "a"), nd("fw", "a")}},
		&ratelimitdv1.ReleaseRequest{Domain: "l", LeaseId: "0123456789abcdef", Descriptors: []*ratelimitdv1.Descriptor{nd("jobs", "a")}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, b []byte) {
		var check ratelimitdv1.CheckRequest
		if proto.Unmarshal(b, &check) == nil {
			resp, err := n.Check(ctx, &check)
			checkAnswer(t, "Check", err, resp != nil, len(resp.GetDescriptors()), len(check.GetDescriptors()))
		}
		var acquire ratelimitdv1.AcquireRequest
		if proto.Unmarshal(b, &acquire) == nil {
			resp, err := n.Acquire(ctx, &acquire)
			checkAnswer(t, "Acquire", err, resp != nil, len(resp.GetDescriptors()), len(acquire.GetDescriptors()))
			if resp.GetAcquired() {
				if _, err := parseLease(resp.GetLeaseId()); err != nil {
					t.Fatalf("Acquire returned a lease id it cannot parse: %v", err)
				}
			}
		}
		var release ratelimitdv1.ReleaseRequest
		if proto.Unmarshal(b, &release) == nil {
			resp, err := n.Release(ctx, &release)
			checkAnswer(t, "Release", err, resp != nil, 0, 0)
		}
	})
}

func checkAnswer(t *testing.T, method string, err error, answered bool, got, want int) {
	t.Helper()
	switch {
	case err != nil && status.Code(err) != codes.InvalidArgument:
		t.Fatalf("%s: %v, want nil or InvalidArgument", method, err)
	case err == nil && answered && got != want:
		t.Fatalf("%s: %d results for %d descriptors", method, got, want)
	}
}
