package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ratelimitd/ratelimitd/algorithms"
)

func TestOverLimitCacheSizeFlag(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		env  string
		want int
		err  string
	}{
		{name: "default off", want: 0},
		{name: "flag", args: []string{"-overlimit-cache-size", "1000"}, want: 1000},
		{name: "environment", env: "64", want: 64},
		{name: "the flag wins", args: []string{"-overlimit-cache-size", "5"}, env: "64", want: 5},
		{name: "negative", args: []string{"-overlimit-cache-size", "-1"}, err: "-overlimit-cache-size"},
		{name: "not a number", env: "lots", err: "RATELIMITD_OVERLIMIT_CACHE_SIZE"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("RATELIMITD_OVERLIMIT_CACHE_SIZE", c.env)
			}
			f, err := parseServeFlags(append([]string{"-config", "x"}, c.args...), io.Discard)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Errorf("got %v, want an error naming %s", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.overLimitCache != c.want {
				t.Errorf("got %d, want %d", f.overLimitCache, c.want)
			}
		})
	}
}

// refuser refuses every request for a minute.
type refuser struct{}

func (refuser) Decide(_ context.Context, reqs []algorithms.Request) ([]algorithms.Result, error) {
	out := make([]algorithms.Result, len(reqs))
	for i := range out {
		out[i] = algorithms.Result{Limit: 1, ResetAfter: time.Minute, RetryAfter: time.Minute}
	}
	return out, nil
}

func TestOverLimitCacheMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	d := withOverLimitCache(refuser{}, 10, reg, zap.NewNop())
	req := []algorithms.Request{{Algorithm: algorithms.FixedWindow, Key: "k", Limit: 1, Window: time.Minute, Hits: 1}}
	for range 3 {
		if _, err := d.Decide(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
	}
	for name, want := range map[string]float64{
		"ratelimitd_overlimit_cache_hits_total":   2,
		"ratelimitd_overlimit_cache_misses_total": 1,
	} {
		if got[name] != want {
			t.Errorf("%s: got %v, want %v", name, got[name], want)
		}
	}
}
