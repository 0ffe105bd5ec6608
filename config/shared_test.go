package config

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLoadPriorityAndFairShare(t *testing.T) {
	s := mustLoad(t, map[string]string{"d.yaml": `
domain: d
descriptors:
  - key: api
    value: checkout
    descriptors:
      - key: priority
        rate_limit:
          algorithm: priority
          unit: second
          requests_per_unit: 100
          priority:
            default_class: default
            classes:
              - {name: critical, share: 1.0}
              - {name: default, share: 0.8}
              - {name: sheddable, share: 0.29}
  - key: pool
    descriptors:
      - key: tenant
        rate_limit:
          algorithm: fair_share
          unit: second
          requests_per_unit: 1000
          fair_share:
            idle_timeout: 2500ms
            weights: {acme: 2, "42": 7}
  - key: plain
    rate_limit: {algorithm: fair_share, unit: minute, requests_per_unit: 10}
  - key: lowest
    rate_limit:
      algorithm: priority
      unit: second
      requests_per_unit: 10
      priority: {classes: [{name: high, share: 1}, {name: low, share: 0.5}]}
`})
	p := Lookup(s, "d", entries("api", "checkout", "priority", "critical"))
	if p == nil || p.Priority == nil {
		t.Fatalf("priority rule: got %+v", p)
	}
	wantClasses := []Class{{"critical", 1_000_000}, {"default", 800_000}, {"sheddable", 290_000}}
	if !reflect.DeepEqual(p.Priority.Classes, wantClasses) || p.Priority.Default != 1 {
		t.Errorf("classes: got %+v default %d, want %+v default 1", p.Priority.Classes, p.Priority.Default, wantClasses)
	}
	for value, want := range map[string]string{"critical": "critical", "sheddable": "sheddable", "": "default", "bogus": "default"} {
		if got := p.Priority.Class(value).Name; got != want {
			t.Errorf("Class(%q): got %q, want %q", value, got, want)
		}
	}
	if got := Lookup(s, "d", entries("api", "checkout", "priority", "anything")); got != p {
		t.Errorf("every value shares the rule: got %+v", got)
	}
	if got := Lookup(s, "d", entries("lowest", "x")).Priority; got.Default != 1 {
		t.Errorf("no default_class: default %d, want 1 (the last class)", got.Default)
	}

	f := Lookup(s, "d", entries("pool", "search", "tenant", "acme"))
	if f == nil || f.FairShare == nil {
		t.Fatalf("fair_share rule: got %+v", f)
	}
	if f.FairShare.IdleTimeout != 2500*time.Millisecond {
		t.Errorf("idle_timeout: got %v, want 2.5s", f.FairShare.IdleTimeout)
	}
	for tenant, want := range map[string]int64{"acme": 2, "42": 7, "other": 1} {
		if got := f.FairShare.Weight(tenant); got != want {
			t.Errorf("Weight(%q): got %d, want %d", tenant, got, want)
		}
	}
	plain := Lookup(s, "d", entries("plain", "t"))
	if plain.FairShare == nil || plain.FairShare.IdleTimeout != time.Minute || plain.FairShare.Weight("t") != 1 {
		t.Errorf("fair_share defaults: got %+v, want idle one window and weight 1", plain.FairShare)
	}
}

func TestLoadSharedRejects(t *testing.T) {
	head := "domain: d\ndescriptors:\n"
	rule := func(extra string) string {
		return head + "  - key: priority\n    rate_limit:\n      algorithm: priority\n      unit: second\n      requests_per_unit: 10\n" + extra
	}
	tests := []struct {
		name, yaml, want string
	}{
		{"no classes block", rule(""),
			`d.yaml:5: domain "d" descriptors[0] (priority): rate_limit.priority: missing: algorithm priority needs its classes`},
		{"unknown field", rule("      priority: {classes: [{name: a, share: 1}], default: a}\n"),
			`d.yaml:8: domain "d" descriptors[0] (priority): rate_limit.priority.default: unknown field (want one of classes, default_class)`},
		{"unknown class field", rule("      priority: {classes: [{name: a, share: 1, weight: 2}]}\n"),
			`rate_limit.priority.classes[0].weight: unknown field (want one of name, share)`},
		{"duplicate class", rule("      priority:\n        classes:\n          - {name: a, share: 1}\n          - {name: a, share: 0.5}\n"),
			`d.yaml:11: domain "d" descriptors[0] (priority): rate_limit.priority.classes[1].name: "a" is already classes[0]`},
		{"share zero", rule("      priority: {classes: [{name: a, share: 0}]}\n"),
			`rate_limit.priority.classes[0].share: must be a number greater than 0 and at most 1, got "0"`},
		{"share above one", rule("      priority: {classes: [{name: a, share: 1.5}]}\n"),
			`rate_limit.priority.classes[0].share: must be a number greater than 0 and at most 1, got "1.5"`},
		{"share text", rule("      priority: {classes: [{name: a, share: half}]}\n"),
			`rate_limit.priority.classes[0].share: must be a number greater than 0 and at most 1, got "half"`},
		{"share missing", rule("      priority: {classes: [{name: a}]}\n"),
			`rate_limit.priority.classes[0].share: missing`},
		{"name missing", rule("      priority: {classes: [{share: 1}]}\n"),
			`rate_limit.priority.classes[0].name: missing`},
		{"increasing shares", rule("      priority: {classes: [{name: a, share: 0.5}, {name: b, share: 0.9}]}\n"),
			`rate_limit.priority.classes[1].share: 0.9 is above the share of "a" before it (0.5)`},
		{"empty classes", rule("      priority: {classes: []}\n"),
			`rate_limit.priority.classes: must list at least one class`},
		{"default not listed", rule("      priority: {default_class: b, classes: [{name: a, share: 1}]}\n"),
			`d.yaml:8: domain "d" descriptors[0] (priority): rate_limit.priority.default_class: "b" is not one of the classes (a)`},
		{"priority block on another algorithm", head + "  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      priority: {classes: [{name: a, share: 1}]}\n",
			`d.yaml:7: domain "d" descriptors[0] (k): rate_limit.priority: only valid with algorithm priority`},
		{"fair_share block on another algorithm", head + "  - key: k\n    rate_limit:\n      algorithm: priority\n      unit: second\n      requests_per_unit: 1\n      priority: {classes: [{name: a, share: 1}]}\n      fair_share: {}\n",
			`rate_limit.fair_share: only valid with algorithm fair_share`},
		{"rule on a value", head + "  - key: tenant\n    value: acme\n    rate_limit: {algorithm: fair_share, unit: second, requests_per_unit: 1}\n",
			`d.yaml:4: domain "d" descriptors[0] (tenant=acme): value: a fair_share rule must be on a key-only descriptor`},
		{"rule on a wildcard", head + "  - key: tenant\n    value: team-*\n    rate_limit: {algorithm: fair_share, unit: second, requests_per_unit: 1}\n",
			`value: a fair_share rule must be on a key-only descriptor`},
		{"rule with children", rule("      priority: {classes: [{name: a, share: 1}]}\n    descriptors:\n      - key: x\n        rate_limit: {unit: second, requests_per_unit: 1}\n"),
			`d.yaml:9: domain "d" descriptors[0] (priority): descriptors: a priority rule must be on the last entry of a descriptor`},
		{"weight zero", head + "  - key: t\n    rate_limit:\n      algorithm: fair_share\n      unit: second\n      requests_per_unit: 1\n      fair_share: {weights: {acme: 0}}\n",
			`d.yaml:8: domain "d" descriptors[0] (t): rate_limit.fair_share.weights.acme: must be an integer from 1 to 1000, got "0"`},
		{"weight fraction", head + "  - key: t\n    rate_limit:\n      algorithm: fair_share\n      unit: second\n      requests_per_unit: 1\n      fair_share: {weights: {acme: 1.5}}\n",
			`rate_limit.fair_share.weights.acme: must be an integer from 1 to 1000, got "1.5"`},
		{"duplicate weight", head + "  - key: t\n    rate_limit:\n      algorithm: fair_share\n      unit: second\n      requests_per_unit: 1\n      fair_share:\n        weights:\n          acme: 1\n          acme: 2\n",
			`d.yaml:11: domain "d" descriptors[0] (t): rate_limit.fair_share.weights.acme: given twice (first at line 10)`},
		{"idle timeout", head + "  - key: t\n    rate_limit:\n      algorithm: fair_share\n      unit: second\n      requests_per_unit: 1\n      fair_share: {idle_timeout: 10}\n",
			`rate_limit.fair_share.idle_timeout: must be a duration of whole milliseconds from 1ms to`},
		{"idle timeout sub-millisecond", head + "  - key: t\n    rate_limit:\n      algorithm: fair_share\n      unit: second\n      requests_per_unit: 1\n      fair_share: {idle_timeout: 1500us}\n",
			`rate_limit.fair_share.idle_timeout: must be a duration of whole milliseconds`},
		{"fair_share unknown field", head + "  - key: t\n    rate_limit:\n      algorithm: fair_share\n      unit: second\n      requests_per_unit: 1\n      fair_share: {idle: 1s}\n",
			`rate_limit.fair_share.idle: unknown field (want one of idle_timeout, weights)`},
		{"unknown algorithm lists the new ones", head + "  - key: t\n    rate_limit: {algorithm: fair, unit: second, requests_per_unit: 1}\n",
			`unknown algorithm "fair" (want fixed_window, sliding_window, token_bucket, priority, fair_share or concurrency)`},
	}
	for _, tt := range tests {
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
