package test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// faultConfig has one rule per failure mode, each with room for every request of a test.
const faultConfig = `domain: faults
descriptors:
  - key: error
    rate_limit: {unit: hour, requests_per_unit: 1000000}
  - key: allow
    rate_limit: {unit: hour, requests_per_unit: 1000000, failure_mode: allow}
  - key: deny
    rate_limit: {unit: hour, requests_per_unit: 1000000, failure_mode: deny}
  - key: local
    rate_limit: {unit: hour, requests_per_unit: 4, failure_mode: local}
`

func faultDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "faults.yaml"), faultConfig)
	return dir
}

// codeCounts counts answers by gRPC code, safely from many goroutines.
type codeCounts struct {
	mu sync.Mutex
	n  map[codes.Code]int
}

func (c *codeCounts) add(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[codes.Code]int{}
	}
	c.n[status.Code(err)]++
}

func (c *codeCounts) get(code codes.Code) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[code]
}

// others lists the counts of codes outside allowed.
func (c *codeCounts) others(allowed ...codes.Code) map[codes.Code]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[codes.Code]int{}
	for code, n := range c.n {
		ok := false
		for _, a := range allowed {
			ok = ok || a == code
		}
		if !ok {
			out[code] = n
		}
	}
	return out
}

// TestFaultRedisKilledUnderLoad kills Redis while 8 callers keep calling with a generous
// deadline: every answer is OK or UNAVAILABLE, none waits out the caller's deadline, and once
// Redis is back the answers are OK again.
func TestFaultRedisKilledUnderLoad(t *testing.T) {
	rs := redisserver.Start(t)
	s := startService(t, serviceOptions{configDir: faultDir(t), redisURL: rs.URL()})
	var counts codeCounts
	var afterRestart codeCounts
	var restarted sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := s.client.ShouldRateLimit(ctx, request("faults", desc("error", fmt.Sprintf("w%d-%d", w, i%50))))
				cancel()
				counts.add(err)
				if _, ok := restarted.Load("yes"); ok {
					afterRestart.add(err)
				}
			}
		})
	}
	waitCount := func(what string, c *codeCounts, code codes.Code, n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for c.get(code) < n {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("no %d %v answers %s within 20s (counts %v)", n, code, what, c.n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCount("before the kill", &counts, codes.OK, 200)
	rs.Stop()
	waitCount("with Redis killed", &counts, codes.Unavailable, 200)
	rs.Restart()
	restarted.Store("yes", true)
	waitCount("after Redis restarted", &afterRestart, codes.OK, 200)
	close(stop)
	wg.Wait()

	if bad := counts.others(codes.OK, codes.Unavailable); len(bad) > 0 {
		t.Errorf("answers other than OK and UNAVAILABLE: %v (all: %v)", bad, counts.n)
	}
	t.Logf("answers: %v", counts.n)
}

// TestFaultRedisSlow puts 200ms of latency on every Redis response, with callers giving 100ms:
// the service answers UNAVAILABLE (or the rule's failure mode) before their deadline, never
// DEADLINE_EXCEEDED; without the latency, answers are OK again.
func TestFaultRedisSlow(t *testing.T) {
	rs := redisserver.Start(t)
	p := startProxy(t, rs.Addr)
	s := startService(t, serviceOptions{configDir: faultDir(t), redisURL: "redis://" + p.Addr + "/0",
		args: []string{"-deadline-margin", "50ms"}})
	s.mustCall(request("faults", desc("error", unique(t))))

	p.setDelay(200 * time.Millisecond)
	var errMode, allowMode codeCounts
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		_, err := s.client.ShouldRateLimit(ctx, request("faults", desc("error", fmt.Sprint(i))))
		cancel()
		errMode.add(err)
		ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
		resp, err := s.client.ShouldRateLimit(ctx, request("faults", desc("allow", fmt.Sprint(i))))
		cancel()
		allowMode.add(err)
		if err == nil {
			if m := resp.GetDynamicMetadata().AsMap(); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || m["degraded"] != true {
				t.Errorf("failure_mode allow on a slow store: %v, metadata %v; want OK and degraded", resp.GetOverallCode(), m)
			}
		}
	}
	if got := errMode.get(codes.Unavailable); got != 20 {
		t.Errorf("failure_mode error on a slow store: %d of 20 UNAVAILABLE, want all (counts %v)", got, errMode.n)
	}
	if got := allowMode.get(codes.OK); got != 20 {
		t.Errorf("failure_mode allow on a slow store: %d of 20 OK, want all (counts %v)", got, allowMode.n)
	}

	p.setDelay(0)
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := s.call(request("faults", desc("allow", unique(t))))
		if err == nil && resp.GetDynamicMetadata().AsMap()["degraded"] == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still degraded 15s after the latency went away: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFaultFailureModes stops Redis: each failure mode gives its documented answer through
// both APIs, flagged degraded, and counted.
func TestFaultFailureModes(t *testing.T) {
	rs := redisserver.Start(t)
	s := startService(t, serviceOptions{configDir: faultDir(t), redisURL: rs.URL(), args: []string{"-replicas", "2"}})
	native := ratelimitdv1.NewRateLimiterClient(s.conn)
	id := unique(t)
	s.mustCall(request("faults", desc("allow", id)))
	rs.Stop()

	if _, err := s.call(request("faults", desc("error", id))); status.Code(err) != codes.Unavailable {
		t.Errorf("error: %v, want UNAVAILABLE", err)
	}
	resp := s.mustCall(request("faults", desc("allow", id)))
	if g, _ := metaGrade(t, resp); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || g != "ok" || resp.GetDynamicMetadata().AsMap()["degraded"] != true {
		t.Errorf("allow: %v grade %s metadata %v, want OK, ok, degraded", resp.GetOverallCode(), g, resp.GetDynamicMetadata().AsMap())
	}
	resp = s.mustCall(request("faults", desc("deny", id)))
	if g, _ := metaGrade(t, resp); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || g != "over_limit" || headerMap(resp.GetResponseHeadersToAdd())["retry-after"] != "1" {
		t.Errorf("deny: %v grade %s headers %v, want OVER_LIMIT, over_limit, Retry-After 1", resp.GetOverallCode(), g, resp.GetResponseHeadersToAdd())
	}
	// local: 4 per hour over 2 replicas is 2 here.
	var got []bool
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := native.Check(ctx, &ratelimitdv1.CheckRequest{Domain: "faults", Descriptors: []*ratelimitdv1.Descriptor{
			{Entries: []*ratelimitdv1.Entry{{Key: "local", Value: id}}}}})
		cancel()
		if err != nil {
			t.Fatalf("native local: %v", err)
		}
		if !r.GetDescriptors()[0].GetDegraded() {
			t.Errorf("native local: %v, want degraded", r)
		}
		got = append(got, r.GetAllowed())
	}
	if fmt.Sprint(got) != "[true true false]" {
		t.Errorf("local admitted %v, want [true true false] (4 per hour / 2 replicas)", got)
	}
	_, body := s.get("/metrics")
	for _, want := range []string{`ratelimitd_degraded_decisions_total{mode="allow"} 1`, `ratelimitd_degraded_decisions_total{mode="deny"} 1`, `ratelimitd_degraded_decisions_total{mode="local"} 3`} {
		if !containsLine(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func containsLine(body, line string) bool {
	for _, l := range splitLines(body) {
		if l == line {
			return true
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// TestFaultOverload: with a fixed in-flight limit of 4 and a store slowed to 200ms, 32 callers
// at once (half of them sheddable) get either an answer or RESOURCE_EXHAUSTED with a retry
// hint at once — nothing queues — and sheddable callers are refused first.
func TestFaultOverload(t *testing.T) {
	rs := redisserver.Start(t)
	p := startProxy(t, rs.Addr)
	s := startService(t, serviceOptions{configDir: faultDir(t), redisURL: "redis://" + p.Addr + "/0",
		args: []string{"-overload-min-limit", "4", "-overload-max-limit", "4", "-overload-low-priority", "sheddable", "-overload-retry-after", "300ms"}})
	native := ratelimitdv1.NewRateLimiterClient(s.conn)
	p.setDelay(200 * time.Millisecond)

	type tally struct {
		ok, shed, other int
		badHint         int
	}
	var mu sync.Mutex
	byClass := map[string]*tally{"sheddable": {}, "critical": {}}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 32 {
		class := "critical"
		if i%2 == 0 {
			class = "sheddable"
		}
		wg.Go(func() {
			<-start
			for j := range 3 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				var trailer metadata.MD
				_, err := native.Check(ctx, &ratelimitdv1.CheckRequest{Domain: "faults", Priority: class,
					Descriptors: []*ratelimitdv1.Descriptor{{Entries: []*ratelimitdv1.Entry{{Key: "error", Value: fmt.Sprintf("%d-%d", i, j)}}}}},
					grpc.Trailer(&trailer))
				cancel()
				mu.Lock()
				tl := byClass[class]
				switch status.Code(err) {
				case codes.OK:
					tl.ok++
				case codes.ResourceExhausted:
					tl.shed++
					if !retryHint(err, trailer) {
						tl.badHint++
					}
				default:
					tl.other++
					t.Errorf("%s caller: %v, want OK or RESOURCE_EXHAUSTED", class, err)
				}
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	low, high := byClass["sheddable"], byClass["critical"]
	t.Logf("sheddable: %+v, critical: %+v", *low, *high)
	if low.shed+high.shed == 0 {
		t.Error("no request shed with 32 callers against an in-flight limit of 4")
	}
	if low.ok+high.ok < 4 {
		t.Errorf("%d requests answered, want at least the 4 the limit admits", low.ok+high.ok)
	}
	if low.badHint+high.badHint > 0 {
		t.Errorf("%d shed requests without RetryInfo of 300ms and grpc-retry-pushback-ms 300", low.badHint+high.badHint)
	}
	// Sheddable callers get in only below half the limit, critical ones up to the limit; the
	// scheduling decides the exact counts, so only the order is asserted (the exact counts are
	// in server's overload tests, on a controlled clock).
	if low.shed < high.shed || low.ok > high.ok {
		t.Errorf("sheddable: %d shed, %d answered; critical: %d shed, %d answered: want sheddable shed at least as much and answered at most as much", low.shed, low.ok, high.shed, high.ok)
	}
	_, body := s.get("/metrics")
	if !containsLine(body, fmt.Sprintf(`ratelimitd_overload_shed_total{priority="low"} %d`, low.shed)) {
		t.Errorf("/metrics does not count %d low-priority sheds", low.shed)
	}
}

// retryHint reports whether a shed answer carries RetryInfo of 300ms and the pushback trailer.
func retryHint(err error, trailer metadata.MD) bool {
	ok := false
	for _, d := range status.Convert(err).Details() {
		if r, is := d.(*errdetails.RetryInfo); is && r.GetRetryDelay().AsDuration() == 300*time.Millisecond {
			ok = true
		}
	}
	pb := trailer.Get("grpc-retry-pushback-ms")
	return ok && len(pb) == 1 && pb[0] == "300"
}
