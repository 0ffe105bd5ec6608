package algorithms

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
)

// TestTwinsAgree runs the same seeded random steps through the three backends and requires
// identical results step by step; about one step in six is a dry run.
func TestTwinsAgree(t *testing.T) {
	configs := []struct {
		algorithm Name
		limit     int64
		window    time.Duration
		burst     int64
		gap       time.Duration // the largest gap between steps; window / 2 when zero
	}{
		{FixedWindow, 5, time.Second, 0, 0},
		{FixedWindow, 1, 250 * time.Millisecond, 0, 0},
		{SlidingWindow, 7, time.Second, 0, 0},
		{SlidingWindow, 100, 3 * time.Second, 0, 0},
		{SlidingWindow, 3, 997 * time.Millisecond, 0, 0},
		// Many decisions per window: buckets dropping out one by one, retry-afters.
		{SlidingWindow, 12, time.Second, 0, 90 * time.Millisecond},
		{SlidingWindow, 2, 60 * time.Millisecond, 0, 7 * time.Millisecond},
		{TokenBucket, 10, time.Second, 4, 0},
		{TokenBucket, 7, 3 * time.Second, 0, 0},
		{TokenBucket, 1000, time.Second, 50, 0},
		// Buckets of 1ms (2N of them count at once), buckets of 1ms for a 1ms window, the
		// largest numbers; and many decisions per bucket, with refusals, refunds and retries.
		{SlidingWindow, 4, 39 * time.Millisecond, 0, 3 * time.Millisecond},
		{SlidingWindow, 1, time.Millisecond, 0, 700 * time.Microsecond},
		{SlidingWindow, maxCount, maxWindow, 0, maxWindow / 64},
		{SlidingWindow, 30, time.Second, 0, 20 * time.Millisecond},
		{SlidingWindow, 5, time.Minute, 0, 4 * time.Second},
	}
	for ci, c := range configs {
		t.Run(string(c.algorithm), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(ci), 42))
			bs := make([]backend, 0, 3)
			names := make([]string, 0, 3)
			for _, bm := range backends() {
				// redis-server's TTLs run on the wall clock, which can outrun the steps' clock
				// and expire the keys of very short windows that the steps still count.
				if c.window < 50*time.Millisecond && bm.name == "redis-server" {
					continue
				}
				bs = append(bs, bm.make(t))
				names = append(names, bm.name)
			}
			at := time.Duration(rng.Int64N(int64(time.Hour)))
			capacity := c.limit
			if c.algorithm == TokenBucket && c.burst > 0 {
				capacity = c.burst
			}
			gap := c.gap
			if gap == 0 {
				gap = c.window / 2
			}
			for i := range 300 {
				at += time.Duration(rng.Int64N(int64(gap)))
				req := Request{
					Algorithm: c.algorithm, Key: []string{"{r}a", "{r}b"}[rng.IntN(2)],
					Limit: c.limit, Window: c.window, Burst: c.burst,
					Hits:          rng.Int64N(capacity+4) - 2,
					CountRejected: rng.IntN(5) == 0,
				}
				if rng.IntN(3) == 0 {
					req.Hits = 1
				}
				req.DryRun = rng.IntN(6) == 0 // the backends check that it writes nothing
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

// seed varies TestSlidingWindowNeverExceeds: go test ./algorithms -run NeverExceeds -seed N.
var seed = flag.Uint64("seed", 1, "seed of the random streams of TestSlidingWindowNeverExceeds")

// TestSlidingWindowNeverExceeds offers uniform traffic (one hit every d from a start anywhere
// in a window, below, at and far above the limit) and bursty random traffic (bursts of up to
// twice the limit, a few ms to a fifth of a window wide, at random gaps) and checks on the log
// of admitted hits, from the first window on:
//   - no interval of length W holds more than the limit;
//   - every refused hit found at least limit admitted hits in the last W + bw (the window
//     rounded out to a bucket): a burst that fits is admitted.
//
// It also compares what an exact sliding log would admit on the same arrivals and logs the
// shares (go test -v): they are documented on slidingWindow.
func TestSlidingWindowNeverExceeds(t *testing.T) {
	rng := rand.New(rand.NewPCG(*seed, 7))
	t.Logf("seed %d", *seed)
	kinds := []struct {
		name    string
		factors []float64 // demand over the limit; nil for bursty traffic
	}{
		{"uniform below the limit", []float64{0.3, 0.6, 0.9}},
		{"uniform at the limit", []float64{1}},
		{"uniform above the limit", []float64{1.1, 1.5, 2, 3.7, 10, 40}},
		{"bursty", nil},
	}
	// Admitted by sliding_window and by an exact log, per kind, for windows of 20ms and more.
	admitted := make([]int, len(kinds))
	exact := make([]int, len(kinds))
	for _, limit := range []int64{1, 2, 3, 5, 7, 10, 13, 50, 100, 1000} {
		for _, w := range []time.Duration{time.Second, 997 * time.Millisecond, 60 * time.Millisecond, 7 * time.Millisecond, time.Minute} {
			if limit > 20*w.Milliseconds() {
				continue
			}
			for ki, k := range kinds {
				for range 3 {
					var arrivals []time.Duration
					var what string
					start := time.Duration(rng.Int64N(w.Microseconds())) * µs
					if k.factors != nil {
						f := k.factors[rng.IntN(len(k.factors))]
						if f != 1 {
							f *= 0.95 + 0.1*rng.Float64()
						}
						d := max(time.Duration(float64(w)/(float64(limit)*f)), µs).Truncate(µs)
						arrivals = uniform(start, d, 12*w)
						what = fmt.Sprintf("one hit every %v from %v", d, start)
					} else {
						arrivals = bursty(rng, start, limit, w, 12*w)
						what = fmt.Sprintf("%d bursty hits from %v", len(arrivals), start)
					}
					log, refusals := runSliding(limit, w, arrivals)
					if w >= slidingBuckets*time.Millisecond {
						// Shorter windows have buckets of 1ms, coarser than W/N: not tallied.
						admitted[ki] += len(log)
						exact[ki] += exactLog(limit, w, arrivals)
					}
					if n := maxInWindow(log, w); n > int(limit) {
						t.Errorf("limit %d per %v, %s: %d admitted within one window", limit, w, what, n)
					}
					bw := max(w/slidingBuckets, time.Millisecond)
					for _, at := range refusals {
						// Admitted hits in (at - W - bw, at].
						i, _ := slices.BinarySearch(log, at+1)
						j, _ := slices.BinarySearch(log, at-w-bw+1)
						if int64(i-j) < limit {
							t.Errorf("limit %d per %v, %s: refused at %v with %d admitted in the last W + bw",
								limit, w, what, at, i-j)
							break
						}
					}
				}
			}
		}
	}
	for ki, k := range kinds {
		t.Logf("%s: sliding_window admits %.1f%% of what an exact sliding log admits (%d of %d)",
			k.name, 100*float64(admitted[ki])/float64(exact[ki]), admitted[ki], exact[ki])
	}
}

// uniform returns the arrival times start, start+d, ... before span.
func uniform(start, d, span time.Duration) []time.Duration {
	var at []time.Duration
	for a := start; a < span; a += d {
		at = append(at, a)
	}
	return at
}

// bursty returns sorted arrival times from start to span: bursts of 1 to 2 * limit hits (up
// to 4 * limit with the mean), each spread at random over up to a fifth of w (or all at one
// instant), at random gaps sized for a demand of 0.3 to 40 times the limit.
func bursty(rng *rand.Rand, start time.Duration, limit int64, w, span time.Duration) []time.Duration {
	f := []float64{0.3, 0.7, 1, 1.5, 3, 10, 40}[rng.IntN(7)]
	mean := 1 + rng.Int64N(2*limit)
	gap := float64(w) * float64(mean) / (f * float64(limit)) // the mean gap between bursts
	var at []time.Duration
	for a := start; a < span; a += time.Duration(rng.ExpFloat64() * gap).Truncate(µs) {
		width := int64(0)
		if rng.IntN(4) != 0 {
			width = rng.Int64N(w.Microseconds()/5 + 1)
		}
		for range 1 + rng.Int64N(2*mean) {
			if b := a + time.Duration(rng.Int64N(width+1))*µs; b < span {
				at = append(at, b)
			}
		}
	}
	slices.Sort(at)
	return at
}

// runSliding runs the twin, one hit per arrival, and returns the admitted and refused times.
func runSliding(limit int64, w time.Duration, arrivals []time.Duration) (log, refusals []time.Duration) {
	p := params{limit: limit, capacity: limit, windowMs: w.Milliseconds(), hits: 1}
	var state []int64
	start := epoch.UnixMicro()
	for _, at := range arrivals {
		var r reply
		r, state, _ = slidingWindowTwin(start+at.Microseconds(), state, p)
		if r[0] == 1 {
			log = append(log, at)
		} else {
			refusals = append(refusals, at)
		}
	}
	return log, refusals
}

// exactLog counts what an exact sliding log (at most limit admitted in (at-w, at]) admits.
func exactLog(limit int64, w time.Duration, arrivals []time.Duration) int {
	var log []time.Duration
	head := 0
	for _, at := range arrivals {
		for head < len(log) && log[head] <= at-w {
			head++
		}
		if int64(len(log)-head) < limit {
			log = append(log, at)
		}
	}
	return len(log)
}

// maxInWindow is the largest number of log entries within any interval [s, s+w).
func maxInWindow(log []time.Duration, w time.Duration) int {
	worst, j := 0, 0
	for i := range log {
		for j < len(log) && log[j] < log[i]+w {
			j++
		}
		worst = max(worst, j-i)
	}
	return worst
}

// TestTTL checks that every write sets a TTL, that the TTL is no longer than needed, and that
// a dry run leaves it as it is.
func TestTTL(t *testing.T) {
	tests := []struct {
		req  Request
		want time.Duration
	}{
		{Request{Algorithm: FixedWindow, Limit: 5, Window: time.Second, Hits: 1}, 700 * ms},
		{Request{Algorithm: SlidingWindow, Limit: 5, Window: time.Second, Hits: 1}, 1050 * ms}, // bucket [300ms, 350ms)
		{Request{Algorithm: TokenBucket, Limit: 10, Window: time.Second, Burst: 5, Hits: 2}, 200 * ms},
	}
	for _, tt := range tests {
		t.Run(string(tt.req.Algorithm), func(t *testing.T) {
			mr := miniredis.RunT(t)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { _ = c.Close() })
			d := NewRedis(storage.NewRedis(c))
			tt.req.Key = "{t}ttl"
			mr.SetTime(epoch.Add(300 * ms))
			decideOne(t, d, tt.req)
			if got := mr.TTL(tt.req.Key); got != tt.want {
				t.Errorf("TTL after a charge: got %v, want %v", got, tt.want)
			}
			// A dry run leaves the TTL running.
			half := tt.want / 2
			mr.FastForward(half)
			dry := tt.req
			dry.DryRun = true
			decideOne(t, d, dry)
			if got, want := mr.TTL(tt.req.Key), tt.want-half; got != want {
				t.Errorf("TTL after a dry run: got %v, want %v", got, want)
			}
			mr.FastForward(tt.want - half)
			if mr.Exists(tt.req.Key) {
				t.Errorf("key still exists after its TTL")
			}
			// A refund to empty deletes the key.
			decideOne(t, d, tt.req)
			tt.req.Hits = -tt.req.Hits
			decideOne(t, d, tt.req)
			if mr.Exists(tt.req.Key) {
				t.Errorf("key still exists after a refund to empty")
			}
		})
	}
}

func TestDecodeReply(t *testing.T) {
	tests := []struct {
		name string
		raw  any
	}{
		{"not an array", int64(1)},
		{"nil", nil},
		{"too short", []any{int64(1), int64(2), int64(3), int64(4)}},
		{"too long", []any{int64(1), int64(2), int64(3), int64(4), int64(5), int64(6)}},
		{"a string", []any{int64(1), "2", int64(3), int64(4), int64(5)}},
		{"a nil", []any{int64(1), nil, int64(3), int64(4), int64(5)}},
		{"allowed 2", []any{int64(2), int64(2), int64(3), int64(4), int64(5)}},
		{"negative", []any{int64(1), int64(2), int64(3), int64(-4), int64(5)}},
	}
	for _, tt := range tests {
		if _, err := decodeReply(tt.raw); !errors.Is(err, errMalformed) {
			t.Errorf("%s: got %v, want a malformed reply error", tt.name, err)
		}
	}
	r, err := decodeReply([]any{int64(1), int64(2), int64(3), int64(4), int64(5)})
	if err != nil || r != (reply{1, 2, 3, 4, 5}) {
		t.Errorf("a good reply: got %v, %v", r, err)
	}
}

// TestMalformedScriptReply runs a script that answers in the wrong shape.
func TestMalformedScriptReply(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	d := NewRedis(storage.NewRedis(c))
	d.scripts[fixedWindow.id] = storage.NewScript("return {1, 2, 'three', 4, 5}")
	_, err := d.Decide(context.Background(), []Request{{Algorithm: FixedWindow, Key: "k", Limit: 1, Window: time.Second, Hits: 1}})
	if !errors.Is(err, errMalformed) {
		t.Errorf("got %v, want a malformed reply error", err)
	}
}

func TestCheck(t *testing.T) {
	for _, good := range []Request{
		{Algorithm: SlidingWindow, Key: "k", Limit: 10, Window: time.Second, Hits: 1},
		// The sliding window takes the largest numbers: it multiplies no count by a time.
		{Algorithm: SlidingWindow, Key: "k", Limit: maxCount, Window: maxWindow, Hits: maxCount},
	} {
		if err := Check(&good); err != nil {
			t.Errorf("Check(%+v): got %v, want nil", good, err)
		}
	}
	bad := Request{Algorithm: TokenBucket, Key: "k", Limit: 1, Window: 1 << 30 * ms, Burst: 1 << 20, Hits: 1}
	if err := Check(&bad); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("Check(%+v): got %v, want an error containing %q", bad, err, "too large")
	}
}

func TestInvalidRequests(t *testing.T) {
	good := Request{Algorithm: TokenBucket, Key: "k", Limit: 10, Window: time.Second, Burst: 5, Hits: 1}
	tests := []struct {
		name   string
		change func(*Request)
		want   string
	}{
		{"unknown algorithm", func(r *Request) { r.Algorithm = "leaky" }, `unknown algorithm "leaky"`},
		{"window under 1ms", func(r *Request) { r.Window = 999 * µs }, "window"},
		{"negative limit", func(r *Request) { r.Limit = -1 }, "limit"},
		{"negative burst", func(r *Request) { r.Burst = -1 }, "burst"},
		{"huge hits", func(r *Request) { r.Hits = 1 << 50 }, "hits"},
		{"token bucket without rate", func(r *Request) { r.Limit = 0 }, "limit must be positive"},
		{"token bucket tolerance", func(r *Request) { r.Limit = 1; r.Window = 1 << 30 * ms; r.Burst = 1 << 20 }, "too large"},
		{"sliding window beyond the largest window", func(r *Request) { r.Algorithm = SlidingWindow; r.Window = maxWindow + ms }, "window"},
	}
	mem := NewMemory(storage.NewMemory(storage.MemoryOptions{}))
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached: validation comes first
	t.Cleanup(func() { _ = c.Close() })
	for _, tt := range tests {
		req := good
		tt.change(&req)
		for _, d := range []Decider{mem, NewRedis(storage.NewRedis(c))} {
			_, err := d.Decide(context.Background(), []Request{good, req})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s (%T): got %v, want an error containing %q", tt.name, d, err, tt.want)
			}
		}
	}
}
