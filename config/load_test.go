package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// loadOne loads a directory holding only the given file.
func loadOne(t *testing.T, path string) (*Set, error) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return loadFiles(t, map[string]string{filepath.Base(path): string(data)})
}

func TestLoadAcceptFiles(t *testing.T) {
	paths, err := filepath.Glob("testdata/accept/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no accept files: %v", err)
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			s, err := loadOne(t, path)
			if err != nil {
				t.Fatalf("Load: got %v, want no error", err)
			}
			if got, want := s.Domains(), []string{"d"}; !slices.Equal(got, want) {
				t.Errorf("Domains: got %v, want %v", got, want)
			}
		})
	}
}

func TestLoadRejectFiles(t *testing.T) {
	want := map[string]string{
		"duplicate-sibling.yaml":   `duplicate-sibling.yaml:6: domain "d" descriptors[1] (k=v): duplicate of descriptors[0] at line 3`,
		"empty-key.yaml":           `empty-key.yaml:3: domain "d" descriptors[0]: key: missing`,
		"misspelled-key.yaml":      `misspelled-key.yaml:4: domain "d" descriptors[0] (k): ratelimit: unknown field (did you mean "rate_limit"?)`,
		"negative.yaml":            `negative.yaml:6: domain "d" descriptors[0] (k): rate_limit.requests_per_unit: must be an integer from 0 to 4294967295, got -1`,
		"no-domain.yaml":           `no-domain.yaml:1: document 1: domain: missing`,
		"replaces-self.yaml":       `replaces-self.yaml:9: domain "d" descriptors[0] (k): rate_limit.replaces[0].name: must not be the rule's own name "me"`,
		"scalar-list.yaml":         `scalar-list.yaml:2: domain "d" descriptors[0]: a descriptor must be a mapping, got "x"`,
		"unit-unknown.yaml":        `unit-unknown.yaml:5: domain "d" descriptors[0] (k): rate_limit.unit: unknown unit "fortnight"`,
		"unlimited-with-unit.yaml": `unlimited-with-unit.yaml:6: domain "d" descriptors[0] (k): rate_limit.unit: must not be set when unlimited is true`,
	}
	paths, err := filepath.Glob("testdata/reject/*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no reject files: %v", err)
	}
	for _, path := range paths {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			w, ok := want[name]
			if !ok {
				t.Fatalf("no expected error for %s: add one to the table", name)
			}
			s, err := loadOne(t, path)
			if err == nil {
				t.Fatalf("Load: got a set with %v, want an error", s.Domains())
			}
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Load error:\ngot  %v\nwant it to contain %q", err, w)
			}
		})
	}
}

func TestLoadLimits(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want Limit
	}{
		{
			name: "defaults",
			yaml: "rate_limit: {unit: minute, requests_per_unit: 5}",
			want: Limit{Path: "d/k", RequestsPerUnit: 5, Unit: UnitMinute, UnitMultiplier: 1, Window: time.Minute,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "unit is case-insensitive",
			yaml: "rate_limit: {unit: WeeK, requests_per_unit: 5}",
			want: Limit{Path: "d/k", RequestsPerUnit: 5, Unit: UnitWeek, UnitMultiplier: 1, Window: 7 * 24 * time.Hour,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "largest requests_per_unit",
			yaml: "rate_limit: {unit: second, requests_per_unit: 4294967295}",
			want: Limit{Path: "d/k", RequestsPerUnit: 4294967295, Unit: UnitSecond, UnitMultiplier: 1, Window: time.Second,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "token bucket burst defaults to requests_per_unit",
			yaml: "rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket}",
			want: Limit{Path: "d/k", RequestsPerUnit: 10, Unit: UnitSecond, UnitMultiplier: 1, Window: time.Second,
				Algorithm: TokenBucket, Burst: 10, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "token bucket with burst",
			yaml: "rate_limit: {unit: second, requests_per_unit: 10, algorithm: token_bucket, burst: 3}",
			want: Limit{Path: "d/k", RequestsPerUnit: 10, Unit: UnitSecond, UnitMultiplier: 1, Window: time.Second,
				Algorithm: TokenBucket, Burst: 3, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "sliding window with every extension",
			yaml: "rate_limit: {unit: minute, requests_per_unit: 100, algorithm: sliding_window, unit_multiplier: 5, near_limit_ratio: 0.5, count_rejected: true}",
			want: Limit{Path: "d/k", RequestsPerUnit: 100, Unit: UnitMinute, UnitMultiplier: 5, Window: 5 * time.Minute,
				Algorithm: SlidingWindow, NearLimitRatio: 0.5, CountRejected: true},
		},
		{
			name: "near_limit_ratio of 1",
			yaml: "rate_limit: {unit: hour, requests_per_unit: 1, near_limit_ratio: 1}",
			want: Limit{Path: "d/k", RequestsPerUnit: 1, Unit: UnitHour, UnitMultiplier: 1, Window: time.Hour,
				Algorithm: FixedWindow, NearLimitRatio: 1},
		},
		{
			name: "unlimited with requests_per_unit",
			yaml: "rate_limit: {unlimited: true, requests_per_unit: 5}",
			want: Limit{Path: "d/k", Unlimited: true, RequestsPerUnit: 5, UnitMultiplier: 1,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "unlimited ignores an unknown unit, as the reference",
			yaml: "rate_limit: {unlimited: true, unit: fortnight}",
			want: Limit{Path: "d/k", Unlimited: true, UnitMultiplier: 1,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio},
		},
		{
			name: "descriptor flags, name and replaces",
			yaml: "shadow_mode: yes\n    detailed_metric: true\n    rate_limit: {unit: day, requests_per_unit: 7, name: mine, replaces: [{name: a}, {name: b}]}",
			want: Limit{Path: "d/k", Name: "mine", RequestsPerUnit: 7, Unit: UnitDay, UnitMultiplier: 1, Window: 24 * time.Hour,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio, ShadowMode: true, DetailedMetric: true,
				Replaces: []string{"a", "b"}},
		},
		{
			name: "failure_mode",
			yaml: "rate_limit: {unit: second, requests_per_unit: 2, failure_mode: local}",
			want: Limit{Path: "d/k", RequestsPerUnit: 2, Unit: UnitSecond, UnitMultiplier: 1, Window: time.Second,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio, FailureMode: FailLocal},
		},
		{
			name: "null extensions take their defaults",
			yaml: "rate_limit: {unit: second, requests_per_unit: 2, unit_multiplier: null, near_limit_ratio: ~, replaces: null}",
			want: Limit{Path: "d/k", RequestsPerUnit: 2, Unit: UnitSecond, UnitMultiplier: 1, Window: time.Second,
				Algorithm: FixedWindow, NearLimitRatio: DefaultNearLimitRatio},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustLoad(t, map[string]string{"d.yaml": "domain: d\ndescriptors:\n  - key: k\n    " + tt.yaml + "\n"})
			got := Lookup(s, "d", entries("k", "any"))
			if got == nil {
				t.Fatal("Lookup: got nil, want a limit")
			}
			if tt.want.FailureMode == "" {
				tt.want.FailureMode = FailError // the default, left out of the table
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("limit:\ngot  %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestLoadYAMLFeatures(t *testing.T) {
	s := mustLoad(t, map[string]string{"d.yaml": `
domain: d
descriptors:
  - key: a
    value: 123
    rate_limit: &base {unit: minute, requests_per_unit: 5}
  - key: b
    rate_limit: *base
  - key: c
    rate_limit:
      <<: *base
      requests_per_unit: 9
`})
	tests := []struct {
		key, value string
		wantRPU    uint32
		wantPath   string
	}{
		{"a", "123", 5, "d/a=123"},
		{"b", "x", 5, "d/b"},
		{"c", "x", 9, "d/c"},
	}
	for _, tt := range tests {
		got := Lookup(s, "d", entries(tt.key, tt.value))
		if got == nil {
			t.Errorf("Lookup %s=%s: got nil, want a limit", tt.key, tt.value)
			continue
		}
		if got.RequestsPerUnit != tt.wantRPU || got.Unit != UnitMinute || got.Path != tt.wantPath {
			t.Errorf("Lookup %s=%s: got %d/%v at %q, want %d/minute at %q", tt.key, tt.value, got.RequestsPerUnit, got.Unit, got.Path, tt.wantRPU, tt.wantPath)
		}
	}
}

func TestLoadRejects(t *testing.T) {
	const head = "domain: d\ndescriptors:\n  - key: k\n    "
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"burst without token bucket", head + "rate_limit: {unit: second, requests_per_unit: 1, burst: 3}",
			"d.yaml:4: domain \"d\" descriptors[0] (k): rate_limit.burst: only valid with algorithm token_bucket"},
		{"burst with another algorithm", head + "rate_limit: {unit: second, requests_per_unit: 1, algorithm: sliding_window, burst: 3}",
			"rate_limit.burst: only valid with algorithm token_bucket"},
		{"window beyond the exact range", head + "rate_limit: {unit: year, requests_per_unit: 1, unit_multiplier: 3}",
			"rate_limit.unit_multiplier: a window of 3 years is longer than 795 days"},
		{"token bucket without a rate", head + "rate_limit: {unit: second, requests_per_unit: 0, algorithm: token_bucket, burst: 5}",
			"rate_limit.requests_per_unit: must be at least 1 for token_bucket"},
		{"token bucket beyond the exact range", head + "rate_limit: {unit: year, requests_per_unit: 1, algorithm: token_bucket, burst: 4000000000}",
			"rate_limit.burst: a burst of 4000000000 at 1 per 8760h0m0s is beyond what token_bucket counts exactly"},
		{"zero burst", head + "rate_limit: {unit: second, requests_per_unit: 1, algorithm: token_bucket, burst: 0}",
			"rate_limit.burst: must be an integer from 1 to 4294967295, got 0"},
		{"zero unit_multiplier", head + "rate_limit: {unit: second, requests_per_unit: 1, unit_multiplier: 0}",
			"rate_limit.unit_multiplier: must be an integer from 1"},
		{"window too long", head + "rate_limit: {unit: year, requests_per_unit: 1, unit_multiplier: 1000}",
			"rate_limit.unit_multiplier: a window of 1000 years is longer than 795 days"},
		{"zero near_limit_ratio", head + "rate_limit: {unit: second, requests_per_unit: 1, near_limit_ratio: 0}",
			"rate_limit.near_limit_ratio: must be a number greater than 0 and at most 1, got \"0\""},
		{"near_limit_ratio above 1", head + "rate_limit: {unit: second, requests_per_unit: 1, near_limit_ratio: 1.5}",
			"rate_limit.near_limit_ratio: must be a number"},
		{"near_limit_ratio not a number", head + "rate_limit: {unit: second, requests_per_unit: 1, near_limit_ratio: high}",
			"rate_limit.near_limit_ratio: must be a number"},
		{"unknown algorithm", head + "rate_limit: {unit: second, requests_per_unit: 1, algorithm: leaky_bucket}",
			`rate_limit.algorithm: unknown algorithm "leaky_bucket"`},
		{"requests_per_unit too large", head + "rate_limit: {unit: second, requests_per_unit: 4294967296}",
			"rate_limit.requests_per_unit: must be an integer from 0 to 4294967295, got 4294967296"},
		{"requests_per_unit not an integer", head + "rate_limit: {unit: second, requests_per_unit: 1.5}",
			"rate_limit.requests_per_unit: must be an integer"},
		{"requests_per_unit a string", head + "rate_limit: {unit: second, requests_per_unit: five}",
			"rate_limit.requests_per_unit: must be an integer"},
		{"unit missing", head + "rate_limit: {requests_per_unit: 1}",
			"rate_limit.unit: missing"},
		{"unit UNKNOWN", head + "rate_limit: {unit: unknown, requests_per_unit: 1}",
			`rate_limit.unit: unknown unit "unknown"`},
		{"rate_limit a list", head + "rate_limit: [1]",
			"rate_limit: must be a mapping, got a list"},
		{"unknown rate_limit field", head + "rate_limit: {unit: second, requests_per_unit: 1, fail_mode: deny}",
			"rate_limit.fail_mode: unknown field"},
		{"unknown failure_mode", head + "rate_limit: {unit: second, requests_per_unit: 1, failure_mode: open}",
			`rate_limit.failure_mode: unknown failure mode "open" (want error, allow, deny or local)`},
		{"failure_mode not a string", head + "rate_limit: {unit: second, requests_per_unit: 1, failure_mode: [allow]}",
			"rate_limit.failure_mode: "},
		{"empty replaces name", head + "rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: \"\"}]}",
			"rate_limit.replaces[0].name: must not be empty"},
		{"replaces without name", head + "rate_limit: {unit: second, requests_per_unit: 1, replaces: [{}]}",
			"rate_limit.replaces[0].name: missing"},
		{"replaces of strings", head + "rate_limit: {unit: second, requests_per_unit: 1, replaces: [a]}",
			"rate_limit.replaces[0]: must be a mapping {name: ...}, got \"a\""},
		{"replaces not a list", head + "rate_limit: {unit: second, requests_per_unit: 1, replaces: a}",
			"rate_limit.replaces: must be a list"},
		{"unknown replaces field", head + "rate_limit: {unit: second, requests_per_unit: 1, replaces: [{name: a, nmae: b}]}",
			"rate_limit.replaces[0].nmae: unknown field"},
		{"shadow_mode not a bool", head + "shadow_mode: maybe",
			`shadow_mode: must be true or false (unquoted), got "maybe"`},
		{"shadow_mode quoted true", head + `shadow_mode: "true"`,
			`shadow_mode: must be true or false (unquoted), got "true"`},
		{"shadow_mode quoted yes", head + `shadow_mode: 'yes'`,
			`shadow_mode: must be true or false (unquoted), got "yes"`},
		{"key a mapping", "domain: d\ndescriptors:\n  - key: {a: b}",
			"key: must be a string, got a mapping"},
		{"empty key", "domain: d\ndescriptors:\n  - key: \"\"",
			"d.yaml:3: domain \"d\" descriptors[0]: key: must not be empty"},
		{"field given twice", head + "key: j",
			"d.yaml:4: domain \"d\" descriptors[0]: key: given twice (first at line 3)"},
		{"duplicate defaults", "domain: d\ndescriptors:\n  - key: k\n  - key: k",
			"d.yaml:4: domain \"d\" descriptors[1] (k): duplicate of descriptors[0] at line 3"},
		{"duplicate wildcards", "domain: d\ndescriptors:\n  - {key: k, value: a*}\n  - {key: k, value: a*}",
			"descriptors[1] (k=a*): duplicate of descriptors[0]"},
		{"nested duplicate", "domain: d\ndescriptors:\n  - key: a\n    value: b\n    descriptors:\n      - key: c\n      - key: c\n",
			`d.yaml:7: domain "d" descriptors[0] (a=b) > descriptors[1] (c): duplicate of descriptors[0] at line 6`},
		{"nested problem", "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: c\n        rate_limit: {unit: fortnight}\n",
			`d.yaml:6: domain "d" descriptors[0] (a) > descriptors[0] (c): rate_limit.unit: unknown unit "fortnight"`},
		{"descriptors not a list", "domain: d\ndescriptors: {key: k}",
			"d.yaml:2: domain \"d\": descriptors: must be a list, got a mapping"},
		{"unknown top-level field", "domain: d\ndescriptor: []",
			`d.yaml:2: domain "d": descriptor: unknown field (want one of domain, descriptors)`},
		{"empty domain", "domain: \"\"\ndescriptors: []",
			"d.yaml:1: document 1: domain: must not be empty"},
		{"document not a mapping", "- domain: d",
			"d.yaml:1: document 1: a document must be a mapping with domain and descriptors, got a list"},
		{"empty file", "# nothing here\n",
			"d.yaml: domain: missing: the file has no YAML document"},
		{"only null documents", "---\n~\n---\n",
			"d.yaml: domain: missing: the file has no YAML document"},
		{"syntax error", "domain: d\ndescriptors:\n  - key: k\n   value: [",
			"d.yaml:2: did not find expected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := loadFiles(t, map[string]string{"d.yaml": tt.yaml + "\n"})
			if err == nil {
				t.Fatalf("Load: got a set with %v, want an error containing %q", s.Domains(), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load error:\ngot  %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := loadFiles(t, map[string]string{
		"a.yaml": `domain: a
descriptors:
  - key: k
    ratelimit: {}
  - key: route
    descriptors:
      - key: x
        rate_limit: {unit: fortnight, requests_per_unit: 1}
      - key: y
        value: z
        rate_limit: {unit: second, requests_per_unit: -3}
`,
		"b.yaml": "domain: b\ndescriptors:\n  - value: v\n",
		"c.yml":  "domain: c\n---\ndescriptors: []\n",
	})
	if err == nil {
		t.Fatal("Load: got no error, want one")
	}
	want := []string{
		`a.yaml:4: domain "a" descriptors[0] (k): ratelimit: unknown field (did you mean "rate_limit"?)`,
		`a.yaml:8: domain "a" descriptors[1] (route) > descriptors[0] (x): rate_limit.unit: unknown unit "fortnight" (want second, minute, hour, day, week, month or year)`,
		`a.yaml:11: domain "a" descriptors[1] (route) > descriptors[1] (y=z): rate_limit.requests_per_unit: must be an integer from 0 to 4294967295, got -3`,
		`b.yaml:3: domain "b" descriptors[0]: key: missing`,
		`c.yml:3: document 2: domain: missing`,
	}
	if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
		t.Errorf("Load error lines:\ngot  %q\nwant %q", got, want)
	}
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Load error: got %T, want Errors", err)
	}
	if got, want := len(errs), len(want); got != want {
		t.Errorf("len(Errors): got %d, want %d", got, want)
	}
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"multi.yaml": `---
domain: one
descriptors:
  - {key: k, rate_limit: {unit: second, requests_per_unit: 1}}
---
---
domain: two
descriptors:
...
`,
		"short.yml":             "domain: three\ndescriptors:\n  - {key: k, rate_limit: {unit: hour, requests_per_unit: 2}}\n",
		"notes.txt":             "not: [yaml",
		"README.md":             "# not config",
		"backup.yaml.bak":       "domain: [",
		".hidden.yaml":          "domain: [",
		"..2026_01_01/x.yaml":   "domain: [",
		"sub/nested.yaml":       "domain: nested\n",
		"..data/linked.yaml":    "domain: four\n",
		"dirlike.yaml/inner.go": "package x",
	})
	if err := os.Symlink(filepath.Join("..data", "linked.yaml"), filepath.Join(dir, "linked.yaml")); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := s.Domains(), []string{"four", "one", "three", "two"}; !slices.Equal(got, want) {
		t.Errorf("Domains: got %v, want %v", got, want)
	}
	if got, want := s.RuleCount(), 2; got != want {
		t.Errorf("RuleCount: got %d, want %d", got, want)
	}
	s.Domains()[0] = "changed"
	if got, want := s.Domains()[0], "four"; got != want {
		t.Errorf("Domains after changing a returned slice: got %q first, want %q", got, want)
	}
}

func TestLoadDuplicateDomain(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"two files", map[string]string{"a.yaml": "domain: shop\n", "b.yaml": "descriptors: []\ndomain: shop\n"},
			`b.yaml:2: domain "shop": domain: "shop" is already defined at a.yaml:1`},
		{"two documents", map[string]string{"a.yaml": "domain: shop\n---\ndomain: shop\n"},
			`a.yaml:3: domain "shop": domain: "shop" is already defined at a.yaml:1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadFiles(t, tt.files)
			if err == nil || err.Error() != tt.want {
				t.Errorf("Load error: got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestLoadDirectoryErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := Load(missing)
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load of a missing dir: got %v, want a not-exist error naming %s", err, missing)
	}

	dir := t.TempDir()
	if err := os.Symlink("nowhere.yaml", filepath.Join(dir, "broken.yaml")); err != nil {
		t.Fatal(err)
	}
	_, err = Load(dir)
	if err == nil || !strings.HasPrefix(err.Error(), "broken.yaml: ") {
		t.Errorf("Load with a broken symlink: got %v, want an error starting with broken.yaml", err)
	}

	s, err := Load(t.TempDir())
	if err != nil || len(s.Domains()) != 0 || s.RuleCount() != 0 {
		t.Errorf("Load of an empty dir: got %v, %v, want an empty set", s, err)
	}
}

func TestLoadRejectsAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("domain: d\nx0: &a0 [k, k, k, k, k, k, k, k, k, k]\n")
	for i := 1; i < 9; i++ {
		fmt.Fprintf(&b, "x%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	_, err := loadFiles(t, map[string]string{"d.yaml": b.String()})
	if want := "d.yaml:1: document 1: too large"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Load error: got %v, want it to contain %q", err, want)
	}
}
