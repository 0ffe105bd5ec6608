package algorithms

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// sharedStep is one timed decision of a priority or fair_share table: member is the tenant
// (fair_share), share the class's share in millionths (priority, 0: whole).
type sharedStep struct {
	at            time.Duration
	member        string
	share         int64
	weight        int64
	hits          int64
	countRejected bool
	dryRun        bool
	want          Result
}

// runSharedTable runs the steps, on one key with limit per window, against every backend.
func runSharedTable(t *testing.T, alg Name, limit int64, window time.Duration, steps []sharedStep) {
	t.Helper()
	for _, bm := range backends() {
		t.Run(bm.name, func(t *testing.T) {
			b := bm.make(t)
			for i, s := range steps {
				req := Request{
					Algorithm: alg, Key: "{t}k", Limit: limit, Window: window, Hits: s.hits,
					CountRejected: s.countRejected, DryRun: s.dryRun, Share: s.share, Member: s.member, Weight: s.weight,
				}
				if got := b.decide(t, epoch.Add(s.at), req); got != s.want {
					t.Errorf("step %d (at %v, %s, hits %d, dry run %t): got %+v, want %+v", i, s.at, s.member, s.hits, s.dryRun, got, s.want)
				}
			}
		})
	}
}

// shed is a refusal graded shed: capacity remains for others.
func shed(remaining, limit int64, reset, retry time.Duration) Result {
	return Result{Remaining: remaining, Limit: limit, ResetAfter: reset, RetryAfter: retry, Shed: true}
}

func TestPriority(t *testing.T) {
	const critical, normal, sheddable = ShareUnit, 800_000, 500_000
	// 10 per second: caps 10, 8 and 5; sub-windows of 50ms, sub-window b counts until
	// (b+1)*50ms + 1s.
	runSharedTable(t, Priority, 10, time.Second, []sharedStep{
		{at: 0, share: sheddable, hits: 1, want: ok(4, 5, 1050*ms)}, // Limit is the class's cap
		{at: 0, share: sheddable, hits: 4, want: ok(0, 5, 1050*ms)},
		// Sheddable is refused first: room remains for the higher classes (shed), until
		// sub-window 0 stops counting.
		{at: 0, share: sheddable, hits: 1, want: shed(0, 5, 1050*ms, 1050*ms)},
		{at: 100 * ms, share: normal, hits: 3, dryRun: true, want: ok(0, 8, 1050*ms)},
		{at: 100 * ms, share: normal, hits: 3, want: ok(0, 8, 1050*ms)},
		{at: 100 * ms, share: normal, hits: 1, want: shed(0, 8, 1050*ms, 950*ms)},
		// Critical finds the headroom above the lower shares, then the limit is spent.
		{at: 100 * ms, share: critical, hits: 2, want: ok(0, 10, 1050*ms)},
		{at: 100 * ms, share: critical, hits: 1, want: refused(0, 10, 1050*ms, 950*ms)},
		{at: 100 * ms, hits: 1, want: refused(0, 10, 1050*ms, 950*ms)}, // share 0 is the whole
		// A cost above the class's cap can never pass, whatever the usage.
		{at: 100 * ms, share: sheddable, hits: 6, want: never(0, 5, 1050*ms)},
		{at: 100 * ms, share: critical, hits: 11, want: never(0, 10, 1050*ms)},
		// A refund comes off the newest sub-window (sub-window 2: 5 -> 3).
		{at: 100 * ms, share: critical, hits: -2, want: ok(2, 10, 1050*ms)},
		// A check charges nothing; refused for a class whose share usage is above (8 > 5).
		{at: 100 * ms, share: sheddable, hits: 0, want: shed(0, 5, 1050*ms, 950*ms)},
		{at: 100 * ms, share: normal, hits: 0, want: ok(0, 8, 1050*ms)},
		// Sub-window 0 (5 hits) stops counting at 1050ms: 3 remain.
		{at: 1049 * ms, share: sheddable, hits: 2, want: shed(0, 5, 101*ms, 1*ms)},
		{at: 1050 * ms, share: sheddable, hits: 2, want: ok(0, 5, 1050*ms)},
		// count_rejected charges the refused hit (6): it waits for sub-window 2 to leave.
		{at: 1050 * ms, share: sheddable, hits: 1, countRejected: true, dryRun: true, want: shed(0, 5, 1050*ms, 100*ms)},
		{at: 1050 * ms, share: sheddable, hits: 1, countRejected: true, want: shed(0, 5, 1050*ms, 100*ms)},
		{at: 1150 * ms, share: normal, hits: 5, want: ok(0, 8, 1050*ms)},
		{at: 1150 * ms, share: sheddable, hits: 1, want: shed(0, 5, 1050*ms, 1050*ms)},
		{at: 1150 * ms, share: critical, hits: 2, want: ok(0, 10, 1050*ms)},
		{at: 1150 * ms, share: critical, hits: 1, want: refused(0, 10, 1050*ms, 950*ms)},
		{at: 1150 * ms, share: critical, hits: 1, countRejected: true, want: refused(0, 10, 1050*ms, 950*ms)},
		{at: 1150 * ms, share: normal, hits: 0, want: refused(0, 8, 1050*ms, 950*ms)}, // 11 > 10: over
		{at: 1150 * ms, share: critical, hits: -100, want: ok(10, 10, 0)},             // stops at empty
		{at: 5 * time.Second, share: 1, hits: 1, want: never(0, 0, 0)},                // a cap of 0
		{at: 5 * time.Second, share: 999_999, hits: 10, want: never(9, 9, 0)},         // floor(9.99999)
		{at: 5 * time.Second, share: 999_999, hits: 9, want: ok(0, 9, 1050*ms)},
	})
}

func TestFairShare(t *testing.T) {
	// A pool of 10 per second; idle after one window.
	runSharedTable(t, FairShare, 10, time.Second, []sharedStep{
		{at: 0, member: "a", hits: 1, want: ok(9, 10, 1000*ms)}, // alone: the whole pool
		{at: 100 * ms, member: "a", hits: 7, want: ok(2, 10, 900*ms)},
		// b joins: fair shares of 5. b is within its share; a (8) is above it and may take
		// only what b cannot claim (b's 4 remaining of its share): shed.
		{at: 200 * ms, member: "b", hits: 1, dryRun: true, want: ok(1, 10, 800*ms)}, // as if b had joined
		{at: 200 * ms, member: "b", hits: 1, want: ok(1, 10, 800*ms)},
		{at: 300 * ms, member: "a", hits: 1, want: shed(0, 10, 700*ms, 700*ms)},
		{at: 300 * ms, member: "b", hits: 1, want: ok(0, 10, 700*ms)},
		// The pool is spent: b, though below its share, joined after a had taken 8 of it.
		{at: 400 * ms, member: "b", hits: 1, want: refused(0, 10, 600*ms, 600*ms)},
		// The next window: both active, 5 each.
		{at: 1000 * ms, member: "a", hits: 5, want: ok(0, 10, 1000*ms)},
		{at: 1100 * ms, member: "a", hits: 1, want: shed(0, 10, 900*ms, 900*ms)},
		{at: 1200 * ms, member: "b", hits: 3, want: ok(2, 10, 800*ms)},
		{at: 1200 * ms, member: "a", hits: 1, want: shed(0, 10, 800*ms, 800*ms)},
		// A refund gives b's hits back (b: 1); a check charges nothing.
		{at: 1200 * ms, member: "b", hits: -2, want: ok(4, 10, 800*ms)},
		{at: 1200 * ms, member: "a", hits: 0, want: ok(0, 10, 800*ms)},
		{at: 1200 * ms, member: "b", hits: -5, want: ok(5, 10, 800*ms)}, // never below 0
		// Both idle for 1s: c alone has the whole pool.
		{at: 2500 * ms, member: "c", hits: 1, dryRun: true, want: ok(9, 10, 500*ms)},
		{at: 2500 * ms, member: "c", hits: 1, want: ok(9, 10, 500*ms)},
		// d weighs 3: shares floor(10/4) = 2 and floor(30/4) = 7.
		{at: 2600 * ms, member: "d", weight: 3, hits: 7, dryRun: true, want: ok(1, 10, 400*ms)},
		{at: 2600 * ms, member: "d", weight: 3, hits: 7, want: ok(1, 10, 400*ms)},
		{at: 2600 * ms, member: "d", weight: 3, hits: 1, want: ok(0, 10, 400*ms)}, // c can claim only 1
		{at: 2600 * ms, member: "d", weight: 3, hits: 1, want: shed(0, 10, 400*ms, 400*ms)},
		{at: 2600 * ms, member: "c", hits: 1, want: ok(0, 10, 400*ms)},
		{at: 2600 * ms, member: "c", hits: 11, want: never(0, 10, 400*ms)},
		// count_rejected charges a refused cost of 2 beyond the pool.
		{at: 2700 * ms, member: "e", hits: 2, countRejected: true, dryRun: true, want: refused(0, 10, 300*ms, 300*ms)},
		{at: 2700 * ms, member: "e", hits: 2, countRejected: true, want: refused(0, 10, 300*ms, 300*ms)},
		// Next window: c, d and e active (shares 2, 6, 2).
		{at: 3000 * ms, member: "e", hits: 2, want: ok(0, 10, 1000*ms)},
		{at: 3000 * ms, member: "e", hits: 1, want: shed(0, 10, 1000*ms, 1000*ms)},
		{at: 3000 * ms, member: "d", weight: 3, hits: 6, want: ok(0, 10, 1000*ms)},
		{at: 3000 * ms, member: "c", hits: 2, want: ok(0, 10, 1000*ms)},
		{at: 3000 * ms, member: "c", hits: 1, want: refused(0, 10, 1000*ms, 1000*ms)},
		// A changed weight changes every share: c 2 -> floor(10*2/6) = 3 of the pool, but it is
		// spent.
		{at: 3100 * ms, member: "c", weight: 2, hits: 1, dryRun: true, want: refused(0, 10, 900*ms, 900*ms)},
		{at: 3100 * ms, member: "c", weight: 2, hits: 1, want: refused(0, 10, 900*ms, 900*ms)},
		// At 4000ms d and e (last seen at 3000ms) have been idle for 1s: e comes back with c
		// (weight 2): shares 6 and 3, and e may take 4 since nobody else can claim it.
		{at: 4000 * ms, member: "e", hits: 4, dryRun: true, want: ok(0, 10, 1000*ms)}, // e idle: as if it rejoined
		{at: 4000 * ms, member: "e", hits: 0, want: ok(4, 10, 1000*ms)},
		{at: 4000 * ms, member: "e", hits: 4, want: ok(0, 10, 1000*ms)},
		{at: 4000 * ms, member: "c", weight: 2, hits: 6, want: ok(0, 10, 1000*ms)},
	})
}

// TestSharedTwinsAgree runs seeded random steps of priority and fair_share through the three
// backends and requires identical results step by step: several classes or tenants on one
// key, weights that change now and then, costs above 1, checks, refunds, count_rejected, dry
// runs, and gaps that let tenants go idle and windows roll.
func TestSharedTwinsAgree(t *testing.T) {
	configs := []struct {
		algorithm Name
		limit     int64
		window    time.Duration
		idle      time.Duration
		gap       time.Duration
		members   int
	}{
		{Priority, 10, time.Second, 0, 90 * time.Millisecond, 0},
		{Priority, 100, 3 * time.Second, 0, 400 * time.Millisecond, 0},
		{Priority, 7, 997 * time.Millisecond, 0, 60 * time.Millisecond, 0},
		{FairShare, 10, time.Second, 0, 80 * time.Millisecond, 4},
		{FairShare, 30, time.Second, 500 * time.Millisecond, 60 * time.Millisecond, 6},
		{FairShare, 100, 2 * time.Second, 3 * time.Second, 300 * time.Millisecond, 12},
		{FairShare, 5, time.Second, 0, 400 * time.Millisecond, 3},
		// Pools smaller than the sum of weights (shares of 0: every tenant with hits is above
		// its share), and many tenants joining and leaving.
		{FairShare, 3, time.Second, 700 * time.Millisecond, 40 * time.Millisecond, 12},
		{FairShare, 1000, 5 * time.Second, 2 * time.Second, 150 * time.Millisecond, 12},
	}
	shares := []int64{0, ShareUnit, 800_000, 500_000, 333_333, 1}
	for ci, c := range configs {
		t.Run(fmt.Sprintf("%s-%d", c.algorithm, ci), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(ci), 4242))
			bs := make([]backend, 0, 3)
			names := make([]string, 0, 3)
			for _, bm := range backends() {
				bs = append(bs, bm.make(t))
				names = append(names, bm.name)
			}
			weights := make([]int64, c.members)
			for i := range weights {
				weights[i] = 1 + rng.Int64N(3)
			}
			at := time.Duration(rng.Int64N(int64(time.Hour)))
			for i := range 400 {
				at += time.Duration(rng.Int64N(int64(c.gap)))
				req := Request{
					Algorithm: c.algorithm, Key: []string{"{r}a", "{r}b"}[rng.IntN(2)],
					Limit: c.limit, Window: c.window, IdleTimeout: c.idle,
					Hits:          rng.Int64N(c.limit/2+4) - 2,
					CountRejected: rng.IntN(8) == 0,
				}
				if rng.IntN(3) == 0 {
					req.Hits = 1
				}
				req.DryRun = rng.IntN(6) == 0 // the backends check that it writes nothing
				if rng.IntN(40) == 0 {
					req.Limit = c.limit + rng.Int64N(5) // a reloaded limit
				}
				if c.algorithm == Priority {
					req.Share = shares[rng.IntN(len(shares))]
				} else {
					m := rng.IntN(c.members)
					if rng.IntN(30) == 0 {
						weights[m] = 1 + rng.Int64N(3)
					}
					req.Member = strings.Repeat(string(rune('a'+m)), 1+m) // names of 1 to 12 bytes
					req.Weight = weights[m]
				}
				want := bs[0].decide(t, epoch.Add(at), req)
				for j := 1; j < len(bs); j++ {
					if got := bs[j].decide(t, epoch.Add(at), req); got != want {
						t.Fatalf("step %d (at %v, %+v): %s says %+v, %s says %+v",
							i, at, req, names[j], got, names[0], want)
					}
				}
			}
		})
	}
}

// TestFairShareKeys checks the keys of a fair_share decision: six, sharing the request key's
// hash tag, each with the TTL max(time to the window's end, idle timeout).
func TestFairShareKeys(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	d := NewRedis(storage.NewRedis(c))
	mr.SetTime(epoch.Add(300 * ms))
	req := Request{Algorithm: FairShare, Key: "p{d|pool=x|tenant}:fs:1000", Limit: 10, Window: time.Second, Member: "acme", Hits: 1}
	decideOne(t, d, req)
	keys := mr.Keys()
	if len(keys) != 6 {
		t.Fatalf("keys: got %v, want 6", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "p{d|pool=x|tenant}") {
			t.Errorf("key %q does not share the request key's hash tag", k)
		}
		if got, want := mr.TTL(k), time.Second; got != want {
			t.Errorf("TTL of %q: got %v, want %v (idle timeout, one window)", k, got, want)
		}
	}
	req.IdleTimeout = 200 * ms
	decideOne(t, d, req)
	if got, want := mr.TTL(req.Key), 700*ms; got != want {
		t.Errorf("TTL with a short idle timeout: got %v, want %v (the window's end)", got, want)
	}
	mr.FastForward(700 * ms)
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("keys after the TTL: %v", keys)
	}
}

func TestSharedInvalidRequests(t *testing.T) {
	tests := []struct {
		req  Request
		want string
	}{
		{Request{Algorithm: Priority, Key: "k", Limit: 10, Window: time.Second, Share: ShareUnit + 1}, "share"},
		{Request{Algorithm: Priority, Key: "k", Limit: 10, Window: time.Second, Share: -1}, "share"},
		{Request{Algorithm: FairShare, Key: "k", Limit: 10, Window: time.Second, Weight: MaxWeight + 1}, "weight"},
		{Request{Algorithm: FairShare, Key: "k", Limit: 10, Window: time.Second, IdleTimeout: maxWindow + ms}, "idle timeout"},
	}
	for _, tt := range tests {
		if err := Check(&tt.req); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Check(%+v): got %v, want an error containing %q", tt.req, err, tt.want)
		}
	}
}

// BenchmarkFairShareScript measures the fair_share script's own run time on a real
// redis-server (Redis's commandstats, no round trip), for a decision of an active tenant and
// for one that adds a tenant, at 10, 100 and 1,000 active tenants, beside sliding_window:
//
//	go test -run '^$' -bench FairShareScript -benchtime 200x ./algorithms
func BenchmarkFairShareScript(b *testing.B) {
	srv := redisserver.Start(b)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { _ = c.Close() })
	d := NewRedis(storage.NewRedis(c))
	ctx := context.Background()
	measure := func(b *testing.B, next func(i int) Request) {
		if err := c.ConfigResetStat(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			if _, err := d.Decide(ctx, []Request{next(i)}); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(evalshaUsPerCall(b, c), "redis-µs/decision")
	}
	b.Run("sliding_window", func(b *testing.B) {
		measure(b, func(int) Request {
			return Request{Algorithm: SlidingWindow, Key: "{base}k", Limit: 1 << 30, Window: time.Hour, Hits: 1}
		})
	})
	for _, n := range []int{10, 100, 1000} {
		key := fmt.Sprintf("{cost%d}k", n)
		req := func(tenant int) Request {
			return Request{Algorithm: FairShare, Key: key, Limit: 1 << 30, Window: time.Hour, Member: fmt.Sprintf("tenant-%d", tenant), Hits: 1}
		}
		for i := range n {
			if _, err := d.Decide(ctx, []Request{req(i)}); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("fair_share/%d-tenants/active", n), func(b *testing.B) {
			measure(b, func(i int) Request { return req(i % n) })
		})
		joined := n
		b.Run(fmt.Sprintf("fair_share/%d-tenants/join", n), func(b *testing.B) {
			measure(b, func(int) Request { joined++; return req(joined) })
		})
	}
}

// evalshaUsPerCall reads Redis's average run time of EVALSHA since the last CONFIG RESETSTAT.
func evalshaUsPerCall(t testing.TB, c *redis.Client) float64 {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_evalsha:") {
			continue
		}
		for _, f := range strings.Split(strings.TrimSpace(strings.TrimPrefix(line, "cmdstat_evalsha:")), ",") {
			if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
				var us float64
				if _, err := fmt.Sscan(v, &us); err != nil {
					t.Fatal(err)
				}
				return us
			}
		}
	}
	t.Fatalf("no cmdstat_evalsha in INFO commandstats:\n%s", info)
	return 0
}

// TestFairShareRebuild strips the parts of the fair_share state that joins use (the header's
// active usage and layout version, the over-share index and the weight counts), as a key
// written by the former layout holds them, now and then during random steps on miniredis: the
// next decision rebuilds them, and every answer stays the twin's.
func TestFairShareRebuild(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	mini := &miniBackend{mr: mr, d: NewRedis(storage.NewRedis(c))}
	mem := newMemoryBackend(t)
	rng := rand.New(rand.NewPCG(7, 4242))
	at := time.Duration(rng.Int64N(int64(time.Hour)))
	const key = "{r}fs"
	rebuilt := 0
	for i := range 600 {
		at += time.Duration(rng.Int64N(int64(60 * time.Millisecond)))
		m := rng.IntN(8)
		req := Request{
			Algorithm: FairShare, Key: key, Limit: 20, Window: time.Second, IdleTimeout: 700 * ms,
			Member: strings.Repeat(string(rune('a'+m)), 1+m), Weight: 1 + int64(m%3),
			Hits: rng.Int64N(8) - 2, CountRejected: rng.IntN(8) == 0, DryRun: rng.IntN(6) == 0,
		}
		if rng.IntN(25) == 0 && mr.Exists(key) {
			mr.HDel(key, "u")
			mr.HDel(key, "v")
			mr.Del(key + ":z")
			mr.Del(key + ":c")
			rebuilt++
		}
		want := mem.decide(t, epoch.Add(at), req)
		if got := mini.decide(t, epoch.Add(at), req); got != want {
			t.Fatalf("step %d (at %v, %+v): miniredis says %+v, memory says %+v", i, at, req, got, want)
		}
	}
	if rebuilt == 0 {
		t.Fatal("no rebuild happened")
	}
}
