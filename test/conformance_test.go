package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// scenario is one file of testdata/scenarios: ordered ShouldRateLimit calls against a server
// loaded with testdata/config, each with the answer expected of its last repetition.
type scenario struct {
	Name   string `json:"name"`
	Domain string `json:"domain"`
	Steps  []struct {
		Note        string  `json:"note"`
		Domain      *string `json:"domain"`
		HitsAddend  uint32  `json:"hits_addend"`
		Repeat      int     `json:"repeat"`
		SleepMs     int     `json:"sleep_ms"`
		Descriptors []struct {
			Entries    [][2]string `json:"entries"`
			HitsAddend *uint64     `json:"hits_addend"`
			Negative   bool        `json:"is_negative_hits"`
			Limit      *struct {
				RequestsPerUnit uint32 `json:"requests_per_unit"`
				Unit            string `json:"unit"`
			} `json:"limit"`
		} `json:"descriptors"`
		Expect *struct {
			GRPCCode string `json:"grpc_code"`
			Overall  string `json:"overall"`
			Statuses []struct {
				Code      string  `json:"code"`
				Limit     *uint32 `json:"limit"`
				Remaining *uint32 `json:"remaining"`
			} `json:"statuses"`
			Headers map[string]string `json:"headers"`
		} `json:"expect"`
	} `json:"steps"`
}

func loadScenarios(t *testing.T) map[string]scenario {
	t.Helper()
	files, err := filepath.Glob("testdata/scenarios/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata/scenarios: %v", err)
	}
	out := make(map[string]scenario)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "$RUN", fmt.Sprintf("r%d", time.Now().UnixNano()))
		dec := json.NewDecoder(strings.NewReader(text))
		dec.DisallowUnknownFields()
		var sc scenario
		if err := dec.Decode(&sc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = sc
	}
	return out
}

// request is the request of step i.
func (sc scenario) request(i int) *rlsv3.RateLimitRequest {
	st := sc.Steps[i]
	req := &rlsv3.RateLimitRequest{Domain: sc.Domain, HitsAddend: st.HitsAddend}
	if st.Domain != nil {
		req.Domain = *st.Domain
	}
	for _, d := range st.Descriptors {
		rd := &ratelimitv3.RateLimitDescriptor{IsNegativeHits: d.Negative}
		for _, e := range d.Entries {
			rd.Entries = append(rd.Entries, &ratelimitv3.RateLimitDescriptor_Entry{Key: e[0], Value: e[1]})
		}
		if d.HitsAddend != nil {
			rd.HitsAddend = wrapperspb.UInt64(*d.HitsAddend)
		}
		if d.Limit != nil {
			rd.Limit = &ratelimitv3.RateLimitDescriptor_RateLimitOverride{
				RequestsPerUnit: d.Limit.RequestsPerUnit,
				Unit:            typev3.RateLimitUnit(typev3.RateLimitUnit_value[strings.ToUpper(d.Limit.Unit)]),
			}
		}
		req.Descriptors = append(req.Descriptors, rd)
	}
	return req
}

// runScenario replays a scenario against s and reports every difference from its expectations.
func runScenario(t *testing.T, s *service, sc scenario) {
	t.Helper()
	for i, st := range sc.Steps {
		req := sc.request(i)
		n := max(st.Repeat, 1)
		var resp *rlsv3.RateLimitResponse
		var err error
		for range n {
			resp, err = s.call(req)
		}
		if st.SleepMs > 0 {
			time.Sleep(time.Duration(st.SleepMs) * time.Millisecond)
		}
		if st.Expect == nil {
			continue
		}
		where := fmt.Sprintf("step %d (%s)", i, st.Note)
		want := st.Expect
		wantCode := want.GRPCCode
		if wantCode == "" {
			wantCode = "OK"
		}
		if got := status.Code(err).String(); got != wantCode {
			t.Errorf("%s: grpc code %s (%v), want %s", where, got, err, wantCode)
			continue
		}
		if err != nil {
			continue
		}
		if want.Overall != "" && resp.GetOverallCode().String() != want.Overall {
			t.Errorf("%s: overall %s, want %s", where, resp.GetOverallCode(), want.Overall)
		}
		if want.Statuses != nil {
			if len(resp.GetStatuses()) != len(want.Statuses) {
				t.Errorf("%s: %d statuses, want %d", where, len(resp.GetStatuses()), len(want.Statuses))
				continue
			}
			for j, w := range want.Statuses {
				g := resp.GetStatuses()[j]
				if w.Code != "" && g.GetCode().String() != w.Code {
					t.Errorf("%s: status %d code %s, want %s", where, j, g.GetCode(), w.Code)
				}
				if w.Limit != nil && g.GetCurrentLimit().GetRequestsPerUnit() != *w.Limit {
					t.Errorf("%s: status %d limit %d, want %d", where, j, g.GetCurrentLimit().GetRequestsPerUnit(), *w.Limit)
				}
				if w.Remaining != nil && g.GetLimitRemaining() != *w.Remaining {
					t.Errorf("%s: status %d remaining %d, want %d", where, j, g.GetLimitRemaining(), *w.Remaining)
				}
			}
		}
		got := headerMap(resp.GetResponseHeadersToAdd())
		for name, w := range want.Headers {
			v, ok := got[strings.ToLower(name)]
			switch {
			case w == "" && ok:
				t.Errorf("%s: header %s=%q present, want absent", where, name, v)
			case w == "*" && !ok:
				t.Errorf("%s: header %s absent, want present", where, name)
			case w != "" && w != "*" && v != w:
				t.Errorf("%s: header %s=%q, want %q", where, name, v, w)
			}
		}
	}
}

func headerMap(hs []*corev3.HeaderValue) map[string]string {
	m := make(map[string]string, len(hs))
	for _, h := range hs {
		m[strings.ToLower(h.GetKey())] = h.GetValue()
	}
	return m
}

// TestConformanceScenarios replays every scenario against the in-memory store and a real Redis.
func TestConformanceScenarios(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			s := b.start(t, serviceOptions{configDir: "testdata/config"})
			for name, sc := range loadScenarios(t) {
				t.Run(name, func(t *testing.T) { runScenario(t, s, sc) })
			}
		})
	}
}

// TestValidateCommand runs `ratelimitd validate` over the accept and reject cases.
func TestValidateCommand(t *testing.T) {
	for _, kind := range []string{"accept", "reject"} {
		files, err := filepath.Glob(filepath.Join("../config/testdata", kind, "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no %s cases: %v", kind, err)
		}
		for _, f := range files {
			t.Run(kind+"/"+filepath.Base(f), func(t *testing.T) {
				dir := t.TempDir()
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
					t.Fatal(err)
				}
				out, err := runBinary(t, nil, "validate", dir)
				switch {
				case kind == "accept" && err != nil:
					t.Errorf("validate exited with %v, want 0; output:\n%s", err, out)
				case kind == "accept" && !strings.Contains(out, "ok"):
					t.Errorf("validate printed %q, want a summary with ok", out)
				case kind == "reject" && exitCode(err) != 1:
					t.Errorf("validate exited with %v, want exit status 1; output:\n%s", err, out)
				case kind == "reject" && !strings.Contains(out, filepath.Base(f)):
					t.Errorf("validate output %q does not name the file %s", out, filepath.Base(f))
				}
			})
		}
	}
}
