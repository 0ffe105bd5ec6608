package test

import (
	"fmt"
	"strconv"
	"sync"
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

const sharedDir = "testdata/priority"

// TestPriorityEndToEnd drives the priority classes through Envoy-shaped requests on both
// stores: a capacity of 10 an hour, critical 100%, default 80%, sheddable 50%.
func TestPriorityEndToEnd(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := b.start(t, serviceOptions{configDir: sharedDir})
			api := unique(t)
			call := func(class string, hits uint64) *rlsv3.RateLimitResponse {
				d := desc("api", api, "priority", class)
				d.HitsAddend = wrapperspb.UInt64(hits)
				return s.mustCall(request("shared", d))
			}
			if resp := call("sheddable", 5); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
				t.Fatalf("sheddable 5 of 5: %v, want OK", resp.GetOverallCode())
			}
			resp := call("sheddable", 1)
			if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
				t.Fatalf("sheddable 6 of 5: %v, want OVER_LIMIT", resp.GetOverallCode())
			}
			if g, _ := metaGrade(t, resp); g != "shed" {
				t.Errorf("sheddable 6 of 5: grade %q, want shed", g)
			}
			h := headerMap(resp.GetResponseHeadersToAdd())
			// The hour is counted in sub-windows of 3 minutes: the oldest leaves 1h to 1h3m on.
			if ra, err := strconv.Atoi(h["retry-after"]); err != nil || ra < 3600 || ra > 3780 {
				t.Errorf("Retry-After = %q, want 3600 to 3780 seconds", h["retry-after"])
			}
			// Unknown and missing classes are the default class: 3 more fit its 8.
			for _, c := range []string{"bogus", "", "default"} {
				if resp := call(c, 1); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					t.Errorf("class %q at 6..8 of 8: %v, want OK", c, resp.GetOverallCode())
				}
			}
			if g, _ := metaGrade(t, call("default", 1)); g != "shed" {
				t.Errorf("default 9 of 8: grade %q, want shed", g)
			}
			// Critical finds the headroom kept above the lower shares.
			if resp := call("critical", 2); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
				t.Errorf("critical 10 of 10: %v, want OK", resp.GetOverallCode())
			}
			if g, _ := metaGrade(t, call("critical", 1)); g != "over_limit" {
				t.Errorf("critical 11 of 10: grade %q, want over_limit", g)
			}
			resp = call("sheddable", 6)
			if g, _ := metaGrade(t, resp); g != "never" || headerMap(resp.GetResponseHeadersToAdd())["retry-after"] != "" {
				t.Errorf("sheddable cost 6 > 5: grade %q, headers %v; want never without Retry-After", g, resp.GetResponseHeadersToAdd())
			}
		})
	}
}

// fairRun is one greedy tenant and four polite ones on a pool of 100 a day: every tenant
// joins with one request, then the greedy one asks for 300 more while each polite one asks for
// 19 more (its share of 20 in all), the requests spread over the services and sent
// concurrently. It returns what each tenant was admitted.
func fairRun(t *testing.T, services []*service) map[string]int {
	t.Helper()
	pool := unique(t)
	var mu sync.Mutex
	admitted := map[string]int{}
	grades := map[string]int{}
	send := func(s *service, tenant string) {
		resp, err := s.call(request("shared", desc("pool", pool, "tenant", tenant)))
		if err != nil {
			t.Errorf("%s: %v", tenant, err)
			return
		}
		g, _ := metaGrade(t, resp)
		mu.Lock()
		defer mu.Unlock()
		grades[g]++
		if resp.GetOverallCode() == rlsv3.RateLimitResponse_OK {
			admitted[tenant]++
		}
	}
	tenants := []string{"greedy", "polite-1", "polite-2", "polite-3", "polite-4"}
	for i, tn := range tenants {
		send(services[i%len(services)], tn)
	}
	// Alone first, the greedy tenant gets what the polite ones cannot claim (100 - 4*19 - 5
	// = 19 more), then it is shed: capacity remains, kept for them.
	for k := range 20 {
		send(services[k%len(services)], "greedy")
	}
	if grades["shed"] != 1 {
		t.Errorf("greedy before the polite tenants' demand: grades %v, want its 20th request shed", grades)
	}
	var wg sync.WaitGroup
	for i, tn := range tenants {
		n := 19
		if tn == "greedy" {
			n = 280
		}
		for w := range 4 { // four concurrent senders per tenant
			wg.Go(func() {
				for k := w; k < n; k += 4 {
					send(services[(i+k)%len(services)], tn)
				}
			})
		}
	}
	wg.Wait()
	t.Logf("admitted %v; grades %v", admitted, grades)
	return admitted
}

// checkFair checks a fairRun: every polite tenant got all it asked for, the greedy one the
// rest, and the total never exceeds the pool.
func checkFair(t *testing.T, admitted map[string]int) {
	t.Helper()
	total := 0
	for tn, n := range admitted {
		total += n
		if tn != "greedy" && n != 20 {
			t.Errorf("%s admitted %d of the 20 it asked for (its fair share)", tn, n)
		}
	}
	if total > 100 {
		t.Errorf("admitted %d in all, more than the pool of 100", total)
	}
	if admitted["greedy"] != 20 {
		t.Errorf("greedy admitted %d, want the 20 the polite tenants left", admitted["greedy"])
	}
}

func TestFairShareEndToEnd(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := b.start(t, serviceOptions{configDir: sharedDir})
			checkFair(t, fairRun(t, []*service{s}))
		})
	}
}

// TestFairShareTwoReplicas runs two services on one redis-server: the pool is shared, never
// exceeded, and polite tenants are fully served whichever replica answers them.
func TestFairShareTwoReplicas(t *testing.T) {
	url := redisserver.Start(t).URL()
	a := startService(t, serviceOptions{configDir: sharedDir, redisURL: url})
	b := startService(t, serviceOptions{configDir: sharedDir, redisURL: url})
	checkFair(t, fairRun(t, []*service{a, b}))
	// A tenant alone on a fresh pool may use all of it, through either replica.
	pool := fmt.Sprintf("alone-%s", unique(t))
	for i := range 101 {
		resp := []*service{a, b}[i%2].mustCall(request("shared", desc("pool", pool, "tenant", "solo")))
		if want := i < 100; (resp.GetOverallCode() == rlsv3.RateLimitResponse_OK) != want {
			t.Fatalf("solo request %d: %v, want admitted %v", i+1, resp.GetOverallCode(), want)
		}
	}
}
