package config

import (
	"strings"
	"testing"
	"time"
)

func TestConcurrencyRule(t *testing.T) {
	s := mustLoad(t, map[string]string{"d.yaml": `
domain: d
descriptors:
  - key: jobs
    rate_limit: {algorithm: concurrency, unit: second, unit_multiplier: 30, requests_per_unit: 3, name: jobs}
`})
	l := Lookup(s, "d", entries("jobs", "x"))
	if l == nil || l.Algorithm != Concurrency || l.RequestsPerUnit != 3 || l.Window != 30*time.Second {
		t.Fatalf("Lookup: got %+v, want a concurrency rule of 3 slots and a 30s window", l)
	}
}

func TestConcurrencyRuleErrors(t *testing.T) {
	head := "domain: d\ndescriptors:\n"
	for _, tt := range []struct{ name, yaml, want string }{
		{"no slots", head + "  - key: k\n    rate_limit: {algorithm: concurrency, unit: second, requests_per_unit: 0}\n",
			`d.yaml:4: domain "d" descriptors[0] (k): rate_limit.requests_per_unit: must be from 1 to 100000 slots with algorithm concurrency, got 0`},
		{"too many slots", head + "  - key: k\n    rate_limit: {algorithm: concurrency, unit: second, requests_per_unit: 100001}\n",
			`rate_limit.requests_per_unit: must be from 1 to 100000 slots with algorithm concurrency, got 100001`},
		{"no unit", head + "  - key: k\n    rate_limit: {algorithm: concurrency, requests_per_unit: 2}\n",
			`rate_limit.unit: missing`},
		{"count_rejected", head + "  - key: k\n    rate_limit: {algorithm: concurrency, unit: second, requests_per_unit: 2, count_rejected: true}\n",
			`d.yaml:4: domain "d" descriptors[0] (k): rate_limit.count_rejected: not valid with algorithm concurrency`},
		{"burst", head + "  - key: k\n    rate_limit: {algorithm: concurrency, unit: second, requests_per_unit: 2, burst: 3}\n",
			`rate_limit.burst: only valid with algorithm token_bucket`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := loadFiles(t, map[string]string{"d.yaml": tt.yaml})
			if err == nil {
				t.Fatalf("Load: got a set with %v, want an error", s.Domains())
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load error:\ngot  %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}
