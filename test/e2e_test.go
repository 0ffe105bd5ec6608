package test

import (
	"context"

	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// unique returns a value no earlier run has used, so counters in a shared store never leak in.
func unique(t *testing.T) string {
	return fmt.Sprintf("%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano())
}

// desc builds a descriptor from key, value pairs.
func desc(kv ...string) *ratelimitv3.RateLimitDescriptor {
	d := &ratelimitv3.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func request(domain string, ds ...*ratelimitv3.RateLimitDescriptor) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: domain, Descriptors: ds}
}

// metaGrade reads the overall grade and the per-descriptor grades from dynamic metadata.
func metaGrade(t *testing.T, resp *rlsv3.RateLimitResponse) (string, []string) {
	t.Helper()
	m := resp.GetDynamicMetadata().AsMap()
	overall, _ := m["grade"].(string)
	var each []string
	list, _ := m["descriptors"].([]any)
	for _, d := range list {
		g, _ := d.(map[string]any)["grade"].(string)
		each = append(each, g)
	}
	return overall, each
}

// TestGradesAndHeaders drives the grades and the headers Envoy receives on both stores.
func TestGradesAndHeaders(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := b.start(t, serviceOptions{configDir: "testdata/config", args: []string{"-x-ratelimit-headers"}})
			id := unique(t)

			t.Run("near limit", func(t *testing.T) {
				var resp *rlsv3.RateLimitResponse
				for i := 0; i < 4; i++ {
					resp = s.mustCall(request("grades", desc("near", id)))
				}
				if g, _ := metaGrade(t, resp); g != "ok" {
					t.Fatalf("grade after 4 of 10 = %q, want ok", g)
				}
				resp = s.mustCall(request("grades", desc("near", id)))
				if g, each := metaGrade(t, resp); g != "near_limit" || each[0] != "near_limit" {
					t.Errorf("grade after 5 of 10 (ratio 0.5) = %q %v, want near_limit", g, each)
				}
				if got := resp.GetOverallCode(); got != rlsv3.RateLimitResponse_OK {
					t.Errorf("overall = %v, want OK", got)
				}
				reqHdr := headerMap(resp.GetRequestHeadersToAdd())
				if got := reqHdr["x-ratelimit-grade"]; got != "near-limit" {
					t.Errorf("request header x-ratelimit-grade = %q, want near-limit", got)
				}
				h := headerMap(resp.GetResponseHeadersToAdd())
				if got, want := h["ratelimit-policy"], `"near-policy";q=10;w=60`; got != want {
					t.Errorf("RateLimit-Policy = %q, want %q", got, want)
				}
				if got := h["ratelimit"]; !strings.HasPrefix(got, `"near-policy";r=5;t=`) {
					t.Errorf("RateLimit = %q, want it to start with \"near-policy\";r=5;t=", got)
				}
				if got := h["x-ratelimit-limit"]; got != "10" {
					t.Errorf("X-RateLimit-Limit = %q, want 10", got)
				}
				if got := h["x-ratelimit-remaining"]; got != "5" {
					t.Errorf("X-RateLimit-Remaining = %q, want 5", got)
				}
				if _, ok := h["retry-after"]; ok {
					t.Errorf("Retry-After on an admitted request: %v", h)
				}
			})

			t.Run("over limit carries Retry-After rounded up", func(t *testing.T) {
				key := desc("gate", id)
				s.mustCall(request("grades", key))
				resp := s.mustCall(request("grades", key))
				if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
					t.Fatalf("second call: overall %v, want OVER_LIMIT", resp.GetOverallCode())
				}
				h := headerMap(resp.GetResponseHeadersToAdd())
				ra, err := strconv.Atoi(h["retry-after"])
				if err != nil || ra < 1 || ra > 60 {
					t.Errorf("Retry-After = %q, want whole seconds in [1, 60]", h["retry-after"])
				}
				reset := resp.GetStatuses()[0].GetDurationUntilReset().AsDuration()
				if want := int((reset + time.Second - 1) / time.Second); ra != want && ra != want+1 {
					t.Errorf("Retry-After = %d, want the reset %v rounded up (%d)", ra, reset, want)
				}
				if g, _ := metaGrade(t, resp); g != "over_limit" {
					t.Errorf("grade = %q, want over_limit", g)
				}
			})

			t.Run("never: a cost above the burst has no Retry-After", func(t *testing.T) {
				d := desc("bucket", id)
				d.HitsAddend = wrapperspb.UInt64(4)
				resp := s.mustCall(request("grades", d))
				if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
					t.Fatalf("overall %v, want OVER_LIMIT", resp.GetOverallCode())
				}
				if g, _ := metaGrade(t, resp); g != "never" {
					t.Errorf("grade = %q, want never", g)
				}
				if v, ok := headerMap(resp.GetResponseHeadersToAdd())["retry-after"]; ok {
					t.Errorf("Retry-After = %q on a request that can never pass", v)
				}
				// The refused cost consumed nothing: the full burst of 3 is still there.
				d.HitsAddend = wrapperspb.UInt64(3)
				if resp := s.mustCall(request("grades", d)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
					t.Errorf("burst of 3 after the refused 4: overall %v, want OK", resp.GetOverallCode())
				}
			})

			t.Run("token bucket refills at its rate", func(t *testing.T) {
				d := desc("bucket", id+"-rate")
				for i := 0; i < 3; i++ {
					if resp := s.mustCall(request("grades", d)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
						t.Fatalf("call %d of the burst: %v", i+1, resp.GetOverallCode())
					}
				}
				resp := s.mustCall(request("grades", d))
				if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
					t.Fatalf("fourth call: %v, want OVER_LIMIT", resp.GetOverallCode())
				}
				if got := headerMap(resp.GetResponseHeadersToAdd())["retry-after"]; got != "1" {
					t.Errorf("Retry-After = %q, want 1 (one token a second)", got)
				}
			})

			t.Run("sliding window", func(t *testing.T) {
				d := desc("sliding", id)
				var resp *rlsv3.RateLimitResponse
				for i := 0; i < 3; i++ {
					resp = s.mustCall(request("grades", d))
				}
				if got := resp.GetStatuses()[0].GetLimitRemaining(); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || got != 0 {
					t.Fatalf("third of 3: %v remaining %d, want OK 0", resp.GetOverallCode(), got)
				}
				if resp := s.mustCall(request("grades", d)); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
					t.Errorf("fourth of 3: %v, want OVER_LIMIT", resp.GetOverallCode())
				}
			})

			t.Run("count_rejected keeps the reference's counting", func(t *testing.T) {
				counted, other := desc("counted", id), desc("near", id+"-other")
				s.mustCall(request("grades", counted))
				resp := s.mustCall(request("grades", counted, other))
				if resp.GetStatuses()[0].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
					t.Fatalf("counted: %v, want OVER_LIMIT", resp.GetStatuses()[0].GetCode())
				}
				// The refused request was all-or-nothing for "near" (refunded): 10 remain.
				resp = s.mustCall(request("grades", other))
				if got := resp.GetStatuses()[0].GetLimitRemaining(); got != 9 {
					t.Errorf("near after the refunded call: remaining %d, want 9", got)
				}
			})

			t.Run("replaces", func(t *testing.T) {
				resp := s.mustCall(request("grades", desc("premium", id), desc("standard", id)))
				st := resp.GetStatuses()
				if st[0].GetCurrentLimit().GetName() != "premium" || st[1].GetCurrentLimit() != nil {
					t.Fatalf("statuses %v, want premium limited and standard replaced", st)
				}
				// standard (1/minute) was neither reported nor charged.
				resp = s.mustCall(request("grades", desc("standard", id)))
				if resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetLimitRemaining() != 0 {
					t.Errorf("standard alone: %v, want OK with 0 remaining (first charge)", resp.GetStatuses()[0])
				}
			})

			t.Run("unit multiplier", func(t *testing.T) {
				resp := s.mustCall(request("grades", desc("every", id)))
				cl := resp.GetStatuses()[0].GetCurrentLimit()
				if cl.GetUnitMultiplier().GetValue() != 5 || cl.GetUnit() != rlsv3.RateLimitResponse_RateLimit_MINUTE {
					t.Errorf("current limit %v, want 2 per 5 minutes", cl)
				}
				if reset := resp.GetStatuses()[0].GetDurationUntilReset().AsDuration(); reset <= 0 || reset > 5*time.Minute {
					t.Errorf("duration until reset %v, want within a 5-minute window", reset)
				}
				if got := headerMap(resp.GetResponseHeadersToAdd())["ratelimit-policy"]; !strings.HasSuffix(got, ";q=2;w=300") {
					t.Errorf("RateLimit-Policy = %q, want q=2;w=300", got)
				}
			})

			t.Run("negative hits refund", func(t *testing.T) {
				d := desc("near", id+"-refund")
				d.HitsAddend = wrapperspb.UInt64(6)
				s.mustCall(request("grades", d))
				d.IsNegativeHits = true
				d.HitsAddend = wrapperspb.UInt64(4)
				resp := s.mustCall(request("grades", d))
				if got := resp.GetStatuses()[0].GetLimitRemaining(); got != 8 {
					t.Errorf("after 6 hits and a refund of 4: remaining %d, want 8", got)
				}
			})
		})
	}
}

// TestBadRequests checks that every malformed request is InvalidArgument naming the field, and
// that nothing is charged for it.
func TestBadRequests(t *testing.T) {
	s := startService(t, serviceOptions{configDir: "testdata/config"})
	id := unique(t)
	big := strings.Repeat("x", 4<<10+1)
	many := make([]*ratelimitv3.RateLimitDescriptor, 65)
	for i := range many {
		many[i] = desc("user", id)
	}
	long := desc()
	for i := 0; i < 65; i++ {
		long.Entries = append(long.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: "k" + strconv.Itoa(i), Value: "v"})
	}
	badUnit := desc("user", id)
	badUnit.Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit_UNKNOWN}
	outOfRange := desc("user", id)
	outOfRange.Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{RequestsPerUnit: 1, Unit: typev3.RateLimitUnit(42)}
	cases := []struct {
		name  string
		req   *rlsv3.RateLimitRequest
		field string
	}{
		{"empty domain", request("", desc("user", id)), "domain"},
		{"no descriptors", request("shop"), "descriptors"},
		{"empty descriptor", request("shop", desc()), "descriptors[0].entries"},
		{"empty key", request("shop", desc("user", id), desc("", "v")), "descriptors[1].entries[0].key"},
		{"65 descriptors", request("shop", many...), "descriptors"},
		{"65 entries", request("shop", long), "descriptors[0].entries"},
		{"key over 4 KiB", request("shop", desc(big, "v")), "descriptors[0].entries[0].key"},
		{"value over 4 KiB", request("shop", desc("user", big)), "descriptors[0].entries[0].value"},
		{"domain over 4 KiB", request(big, desc("user", id)), "domain"},
		{"override with unit UNKNOWN", request("shop", desc("user", id), badUnit), "descriptors[1].limit.unit"},
		{"override with an undefined unit", request("shop", outOfRange), "descriptors[0].limit.unit"},
		{"nil descriptor", request("shop", desc("user", id), nil), "descriptors[1]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := s.call(c.req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v (%v), want InvalidArgument", status.Code(err), err)
			}
			if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, c.field) {
				t.Errorf("message %q does not start with the field %q", msg, c.field)
			}
		})
	}
	// None of the bad requests charged user=id: the first good one sees the full limit.
	resp := s.mustCall(request("shop", desc("user", id)))
	if got := resp.GetStatuses()[0].GetLimitRemaining(); got != 4 {
		t.Errorf("after the bad requests: remaining %d, want 4 (nothing charged)", got)
	}
}

// TestHTTP checks /json, /healthz, /readyz and /metrics.
func TestHTTP(t *testing.T) {
	s := startService(t, serviceOptions{configDir: "testdata/config"})
	id := unique(t)
	body := `{"domain":"grades","descriptors":[{"entries":[{"key":"gate","value":"` + id + `"}]}]}`
	code, _, out := s.postJSON(body)
	if code != http.StatusOK || !strings.Contains(out, `"overallCode":"OK"`) {
		t.Errorf("first /json: %d %s, want 200 with overallCode OK", code, out)
	}
	code, hdr, out := s.postJSON(body)
	if code != http.StatusTooManyRequests || !strings.Contains(out, "OVER_LIMIT") {
		t.Errorf("second /json: %d %s, want 429 OVER_LIMIT", code, out)
	}
	if hdr.Get("Retry-After") == "" || hdr.Get("RateLimit-Policy") == "" {
		t.Errorf("429 headers %v, want Retry-After and RateLimit-Policy", hdr)
	}
	if code, _, out := s.postJSON(`{"domain":"","descriptors":[]}`); code != http.StatusBadRequest || !strings.Contains(out, "domain") {
		t.Errorf("empty domain: %d %s, want 400 naming domain", code, out)
	}
	if code, _, _ := s.postJSON(`{"domain":`); code != http.StatusBadRequest {
		t.Errorf("malformed JSON: %d, want 400", code)
	}
	if code, _, _ := s.postJSON(`{"domain":"shop","nosuchfield":1}`); code != http.StatusBadRequest {
		t.Errorf("unknown field: %d, want 400", code)
	}
	if code, body := s.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := s.get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %s", code, body)
	}
	code, metrics := s.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		`ratelimitd_decisions_total{domain="grades",grade="over_limit"} 1`,
		`ratelimitd_invalid_requests_total 1`,
		`ratelimitd_storage_duration_seconds_bucket`,
		`ratelimitd_config_rules`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(metrics, id) {
		t.Errorf("/metrics carries a descriptor value %q", id)
	}
}

// TestGRPCHealthAndReflection checks the standard gRPC services.
func TestGRPCHealthAndReflection(t *testing.T) {
	s := startService(t, serviceOptions{configDir: "testdata/config"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(s.conn)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "envoy.service.ratelimit.v3.RateLimitService"})
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health: %v %v, want SERVING", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stream, err := reflectionpb.NewServerReflectionClient(s.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		names = append(names, svc.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), "envoy.service.ratelimit.v3.RateLimitService") {
		t.Errorf("reflection lists %v, want the rate-limit service", names)
	}
}

// writeFile writes a file atomically enough for the tests (whole content in one write).
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func limitConfig(domain string, rpu int) string {
	return fmt.Sprintf("domain: %s\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: %d}\n", domain, rpu)
}

// waitLimit polls until a request sees the wanted configured limit.
func waitLimit(t *testing.T, s *service, domain string, want uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got uint32
	for time.Now().Before(deadline) {
		resp := s.mustCall(request(domain, desc("k", unique(t))))
		got = resp.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit()
		if got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("limit stayed %d, want %d after the reload", got, want)
}

// reloadCount reads ratelimitd_config_reloads_total{result}.
func reloadCount(t *testing.T, s *service, result string) int {
	t.Helper()
	_, body := s.get("/metrics")
	prefix := `ratelimitd_config_reloads_total{result="` + result + `"} `
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// TestReload changes the configuration in place, by a ConfigMap-style symlink swap, and with a
// bad file, which must keep the old rules.
func TestReload(t *testing.T) {
	t.Run("in place", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "limits.yaml")
		writeFile(t, file, limitConfig("reload", 5))
		s := startService(t, serviceOptions{configDir: dir})
		waitLimit(t, s, "reload", 5)
		writeFile(t, file, limitConfig("reload", 7))
		waitLimit(t, s, "reload", 7)

		// A bad write is refused; the old rules stay and the failure is counted.
		failed := reloadCount(t, s, "error")
		writeFile(t, file, "domain: reload\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n")
		deadline := time.Now().Add(10 * time.Second)
		for reloadCount(t, s, "error") == failed {
			if time.Now().After(deadline) {
				t.Fatal("the failed reload was not counted in ratelimitd_config_reloads_total{result=\"error\"}")
			}
			time.Sleep(50 * time.Millisecond)
		}
		waitLimit(t, s, "reload", 7)
		if n := strings.Count(s.logs.String(), "fortnight"); n != 1 {
			t.Errorf("the failed reload was logged %d times, want once with its cause", n)
		}

		// Fixed again, the file loads.
		writeFile(t, file, limitConfig("reload", 8))
		waitLimit(t, s, "reload", 8)

		// A new file with a new domain is picked up.
		writeFile(t, filepath.Join(dir, "more.yml"), limitConfig("second", 3))
		waitLimit(t, s, "second", 3)
	})

	t.Run("under load", func(t *testing.T) {
		// Requests in flight while the rules are swapped 20 times: none fails, and each sees
		// either the old or the new limit.
		dir := t.TempDir()
		file := filepath.Join(dir, "limits.yaml")
		writeFile(t, file, limitConfig("load", 1000))
		s := startService(t, serviceOptions{configDir: dir})
		ctx, cancel := context.WithCancel(context.Background())
		type outcome struct {
			calls, failures int
			bad             []uint32
		}
		done := make(chan outcome)
		go func() {
			var o outcome
			for ctx.Err() == nil {
				resp, err := s.call(request("load", desc("k", strconv.Itoa(o.calls))))
				o.calls++
				if err != nil {
					o.failures++
					continue
				}
				if l := resp.GetStatuses()[0].GetCurrentLimit().GetRequestsPerUnit(); l != 1000 && l != 2000 {
					o.bad = append(o.bad, l)
				}
			}
			done <- o
		}()
		for i := 0; i < 20; i++ {
			writeFile(t, file, limitConfig("load", 1000*(1+i%2)))
			time.Sleep(150 * time.Millisecond) // past the 100ms debounce, so each write reloads
		}
		cancel()
		o := <-done
		if o.failures != 0 || len(o.bad) != 0 {
			t.Errorf("%d of %d calls failed during reloads, %d saw a limit other than 1000 or 2000 (%v)", o.failures, o.calls, len(o.bad), o.bad)
		}
		if n := reloadCount(t, s, "ok"); n < 10 {
			t.Errorf("%d reloads counted, want most of the 20 writes to reload", n)
		}
		t.Logf("%d calls across %d reloads, none failed", o.calls, reloadCount(t, s, "ok"))
	})

	t.Run("symlink swap", func(t *testing.T) {
		dir := t.TempDir()
		// The layout of a Kubernetes ConfigMap volume: files link through ..data to a
		// timestamped directory, and an update swaps ..data atomically.
		v1 := filepath.Join(dir, "..v1")
		if err := os.Mkdir(v1, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(v1, "limits.yaml"), limitConfig("swap", 5))
		must(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
		must(t, os.Symlink("..data/limits.yaml", filepath.Join(dir, "limits.yaml")))
		s := startService(t, serviceOptions{configDir: dir})
		waitLimit(t, s, "swap", 5)

		v2 := filepath.Join(dir, "..v2")
		must(t, os.Mkdir(v2, 0o755))
		writeFile(t, filepath.Join(v2, "limits.yaml"), limitConfig("swap", 9))
		must(t, os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
		must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
		must(t, os.RemoveAll(v1))
		waitLimit(t, s, "swap", 9)
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRedisStopped stops Redis under a running service: requests fail fast with UNAVAILABLE
// (within their deadline, not DEADLINE_EXCEEDED), requests with nothing limited still pass, and
// the service recovers when Redis is back.
func TestRedisStopped(t *testing.T) {
	rs := redisserver.Start(t)
	s := startService(t, serviceOptions{configDir: "testdata/config", redisURL: rs.URL()})
	id := unique(t)
	s.mustCall(request("shop", desc("user", id)))

	rs.Stop()
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := s.client.ShouldRateLimit(ctx, request("shop", desc("user", id)))
		cancel()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d with Redis down: %v, want UNAVAILABLE", i, err)
		}
	}
	// Nothing limited: answered without touching Redis.
	if resp := s.mustCall(request("shop", desc("nomatch", id))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Errorf("unlimited request with Redis down: %v, want OK", resp.GetOverallCode())
	}
	if code, _ := s.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with Redis down: %d, want 503", code)
	}
	if code, _ := s.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with Redis down: %d, want 200 (alive)", code)
	}
	code, _, _ := s.postJSON(`{"domain":"shop","descriptors":[{"entries":[{"key":"user","value":"` + id + `"}]}]}`)
	if code != http.StatusServiceUnavailable {
		t.Errorf("/json with Redis down: %d, want 503", code)
	}

	rs.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := s.call(request("shop", desc("user", id)))
		if err == nil {
			// Redis restarted empty: the counter starts again.
			if got := resp.GetStatuses()[0].GetLimitRemaining(); got != 4 {
				t.Errorf("after recovery: remaining %d, want 4", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery within 15s of Redis restarting: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.waitHTTP("/readyz", 10*time.Second)
}

// postJSON posts body to /json and returns the status, headers and body.
func (s *service) postJSON(body string) (int, http.Header, string) {
	resp, err := http.Post("http://"+s.httpAddr+"/json", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, nil, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestRedisDownAtStart: the service starts, is alive but not ready, and becomes ready when Redis
// comes up; it never falls back to the in-memory store.
func TestRedisDownAtStart(t *testing.T) {
	rs := redisserver.Start(t)
	rs.Stop()
	s := startService(t, serviceOptions{configDir: "testdata/config", redisURL: rs.URL(), notReady: true})
	if code, body := s.get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with Redis down: %d %s, want 503", code, body)
	}
	if _, err := s.call(request("shop", desc("user", unique(t)))); status.Code(err) != codes.Unavailable {
		t.Errorf("limited request with Redis down: %v, want UNAVAILABLE", err)
	}
	rs.Restart()
	s.waitHTTP("/readyz", 15*time.Second)
}

// TestEnvironmentAndExit configures the service from RATELIMITD_* variables and checks the
// start-up errors and the graceful exit.
func TestEnvironmentAndExit(t *testing.T) {
	s := startService(t, serviceOptions{
		configDir: "testdata/config",
		env:       []string{"RATELIMITD_NEAR_LIMIT_HEADER=x-degrade: yes", "RATELIMITD_X_RATELIMIT_HEADERS=true"},
	})
	id := unique(t)
	var resp *rlsv3.RateLimitResponse
	for i := 0; i < 5; i++ {
		resp = s.mustCall(request("grades", desc("near", id)))
	}
	if got := headerMap(resp.GetRequestHeadersToAdd())["x-degrade"]; got != "yes" {
		t.Errorf("near-limit header from RATELIMITD_NEAR_LIMIT_HEADER: %v, want x-degrade: yes", resp.GetRequestHeadersToAdd())
	}
	if _, ok := headerMap(resp.GetResponseHeadersToAdd())["x-ratelimit-limit"]; !ok {
		t.Errorf("RATELIMITD_X_RATELIMIT_HEADERS=true did not add X-RateLimit-Limit")
	}
	if err := s.stop(); err != nil {
		t.Errorf("exit after SIGTERM: %v, want status 0", err)
	}

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no config", []string{"serve"}, "-config"},
		{"bad config", []string{"serve", "-config", "../config/testdata/reject"}, "fortnight"},
		{"bad redis url", []string{"serve", "-config", "testdata/config", "-redis-url", "http://nope"}, "-redis-url"},
		{"bad duration from env", []string{"serve", "-config", "testdata/config"}, "RATELIMITD_STORAGE_TIMEOUT"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := []string{}
			cmd = append(cmd, c.args...)
			env := []string{}
			if strings.Contains(c.name, "env") {
				env = append(env, "RATELIMITD_STORAGE_TIMEOUT=soon")
			}
			out, err := runBinary(t, env, cmd...)
			if exitCode(err) == 0 {
				t.Fatalf("exit 0, want a failure; output:\n%s", out)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("output %q does not mention %q", out, c.want)
			}
		})
	}
}

// TestRedisStalled: a Redis that accepts requests but stops answering (a stalled proxy in
// front of it) costs a request at most its deadline minus the margin: the answer is
// UNAVAILABLE, not the caller's own DEADLINE_EXCEEDED. When Redis answers again, so does the
// service.
func TestRedisStalled(t *testing.T) {
	rs := redisserver.Start(t)
	p := startProxy(t, rs.Addr)
	s := startService(t, serviceOptions{configDir: "testdata/config", redisURL: "redis://" + p.Addr + "/0", args: []string{"-deadline-margin", "50ms"}})
	id := unique(t)
	s.mustCall(request("shop", desc("user", id)))

	p.stall()
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := s.client.ShouldRateLimit(ctx, request("shop", desc("user", id)))
		cancel()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d with Redis stalled: %v, want UNAVAILABLE before the caller's deadline", i, err)
		}
	}
	p.unstall()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.call(request("shop", desc("user", id)))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery within 10s of Redis answering again: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
