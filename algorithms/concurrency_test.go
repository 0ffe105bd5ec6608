package algorithms

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
)

// leaseStep is one timed decision of a concurrency table: hits 1 acquires lease for ttl,
// -1 releases it, 0 checks. Each step runs as a dry run first, which must give the same answer
// and change nothing.
type leaseStep struct {
	at    time.Duration
	hits  int64
	lease int64
	ttl   time.Duration // 0: the previous step's
	key   string        // "": "{t}c"
	want  Result
}

func runLeaseTable(t *testing.T, slots int64, steps []leaseStep) {
	t.Helper()
	for _, bm := range backends() {
		t.Run(bm.name, func(t *testing.T) {
			b := bm.make(t)
			ttl := time.Second
			for i, s := range steps {
				if s.ttl != 0 {
					ttl = s.ttl
				}
				key := s.key
				if key == "" {
					key = "{t}c"
				}
				req := Request{Algorithm: Concurrency, Key: key, Limit: slots, Window: ttl, Hits: s.hits, Lease: s.lease}
				// A dry run first: the same answer, and nothing written (the step then gives it too).
				dry := req
				dry.DryRun = true
				if got := b.decide(t, epoch.Add(s.at), dry); got != s.want {
					t.Errorf("step %d (at %v, hits %d, lease %d) dry run: got %+v, want %+v", i, s.at, s.hits, s.lease, got, s.want)
				}
				if got := b.decide(t, epoch.Add(s.at), req); got != s.want {
					t.Errorf("step %d (at %v, hits %d, lease %d): got %+v, want %+v", i, s.at, s.hits, s.lease, got, s.want)
				}
			}
		})
	}
}

func TestConcurrency(t *testing.T) {
	const big = 1<<62 + 12345 // lease ids are 63-bit: never a Lua number
	runLeaseTable(t, 2, []leaseStep{
		{at: 0, hits: 0, want: ok(2, 2, 0)},
		{at: 0, hits: 1, lease: big, want: ok(1, 2, 1000*ms)},
		{at: 100*ms + 700*µs, hits: 1, lease: 2, want: ok(0, 2, 1000*ms)}, // expires at 1100ms
		{at: 200 * ms, hits: 0, want: refused(0, 2, 900*ms, 800*ms)},      // a check: no slot free
		{at: 200 * ms, hits: 1, lease: 3, want: refused(0, 2, 900*ms, 800*ms)},
		{at: 999*ms + 999*µs, hits: 1, lease: 3, want: refused(0, 2, 101*ms, 1*ms)}, // retry-after - 1ms
		// The holder of big died: its slot frees at its TTL, exactly at retry-after.
		{at: 1000 * ms, hits: 1, lease: 3, ttl: 300 * ms, want: ok(0, 2, 300*ms)},
		{at: 1000 * ms, hits: -1, lease: big, want: Result{Remaining: 0, Limit: 2, ResetAfter: 300 * ms}}, // expired: not released
		{at: 1050 * ms, hits: -1, lease: 2, want: ok(1, 2, 250*ms)},                                       // released early
		{at: 1050 * ms, hits: -1, lease: 2, want: Result{Remaining: 1, Limit: 2, ResetAfter: 250 * ms}},   // twice: not released
		{at: 1100 * ms, hits: 1, lease: 3, ttl: time.Second, want: ok(1, 2, 1000*ms)},                     // a held lease is renewed
		{at: 1100 * ms, hits: 1, lease: 4, ttl: 500 * ms, want: ok(0, 2, 1000*ms)},
		{at: 1100 * ms, hits: 1, lease: 5, key: "{t}other", want: ok(1, 2, 500*ms)}, // keys are independent
		{at: 1599 * ms, hits: 1, lease: 5, want: refused(0, 2, 501*ms, 1*ms)},
		{at: 1600 * ms, hits: 0, want: ok(1, 2, 500*ms)}, // lease 4 expired
		{at: 2100 * ms, hits: 0, want: ok(2, 2, 0)},
		{at: 2100 * ms, hits: -1, lease: 3, want: Result{Remaining: 2, Limit: 2}},
	})
}

func TestConcurrencyOneSlot(t *testing.T) {
	// TTLs stay long enough for a real redis-server, whose keys expire on its own clock.
	runLeaseTable(t, 1, []leaseStep{
		{at: 5 * time.Second, hits: 1, lease: 7, ttl: 5 * time.Second, want: ok(0, 1, 5*time.Second)},
		{at: 5 * time.Second, hits: 1, lease: 8, want: refused(0, 1, 5*time.Second, 5*time.Second)},
		{at: 10 * time.Second, hits: 1, lease: 8, ttl: time.Hour, want: ok(0, 1, time.Hour)},
		{at: 10*time.Second + 30*time.Minute, hits: 0, want: refused(0, 1, 30*time.Minute, 30*time.Minute)},
		{at: 10*time.Second + 30*time.Minute, hits: -1, lease: 8, want: ok(1, 1, 0)},
		{at: 10*time.Second + 30*time.Minute, hits: 1, lease: 7, want: ok(0, 1, time.Hour)},
	})
}

// TestConcurrencyExpiry: the key lives until its last lease expires, and a check writes nothing.
func TestConcurrencyExpiry(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	d := NewRedis(storage.NewRedis(c))
	mr.SetTime(epoch)
	req := Request{Algorithm: Concurrency, Key: "{t}c", Limit: 3, Window: 400 * ms, Hits: 1, Lease: 1}
	decideOne(t, d, req)
	req.Lease, req.Window = 2, 900*ms
	decideOne(t, d, req)
	if got, want := mr.TTL(req.Key), 900*ms; got != want {
		t.Errorf("TTL after two leases: got %v, want %v", got, want)
	}
	req.Hits = -1
	decideOne(t, d, req)
	if got, want := mr.TTL(req.Key), 400*ms; got != want {
		t.Errorf("TTL after releasing the later lease: got %v, want %v", got, want)
	}
	req.Hits, req.Lease = -1, 1
	decideOne(t, d, req)
	if mr.Exists(req.Key) {
		t.Errorf("the key survived the release of its last lease")
	}
	mr.FastForward(time.Second)
	req.Hits = 0
	decideOne(t, d, req)
	if mr.Exists(req.Key) {
		t.Errorf("a check wrote the key")
	}
}

func TestConcurrencyBadRequests(t *testing.T) {
	d := NewMemory(storage.NewMemory(storage.MemoryOptions{}))
	for _, r := range []Request{
		{Algorithm: Concurrency, Key: "k", Limit: 0, Window: time.Second, Hits: 1, Lease: 1},
		{Algorithm: Concurrency, Key: "k", Limit: MaxSlots + 1, Window: time.Second, Hits: 1, Lease: 1},
		{Algorithm: Concurrency, Key: "k", Limit: 1, Window: time.Second, Hits: 2, Lease: 1},
		{Algorithm: Concurrency, Key: "k", Limit: 1, Window: time.Second, Hits: 1},
		{Algorithm: Concurrency, Key: "k", Limit: 1, Window: time.Second, Hits: -1, Lease: -4},
		{Algorithm: Concurrency, Key: "k", Limit: 1, Window: 0, Hits: 1, Lease: 1},
	} {
		if err := Check(&r); err == nil {
			t.Errorf("Check(%+v) = nil, want an error", r)
		}
		if _, err := d.Decide(context.Background(), []Request{r}); err == nil {
			t.Errorf("Decide(%+v) = nil error, want one", r)
		}
	}
}
