package algorithms

import (
	"context"
	"errors"
	"flag"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
)

// TestTwinsAgree runs the same seeded random steps through the three backends and requires
// identical results step by step.
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
		// Many decisions per window: first hits mid-window, caps that bind, retry-afters.
		{SlidingWindow, 12, time.Second, 0, 90 * time.Millisecond},
		{SlidingWindow, 2, 60 * time.Millisecond, 0, 7 * time.Millisecond},
		{TokenBucket, 10, time.Second, 4, 0},
		{TokenBucket, 7, 3 * time.Second, 0, 0},
		{TokenBucket, 1000, time.Second, 50, 0},
	}
	for ci, c := range configs {
		t.Run(string(c.algorithm), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(ci), 42))
			bs := make([]backend, 0, 3)
			names := make([]string, 0, 3)
			for _, bm := range backends() {
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
var seed = flag.Uint64("seed", 1, "seed of the random uniform streams of TestSlidingWindowNeverExceeds")

// TestSlidingWindowNeverExceeds offers uniform traffic (one hit every d from a start anywhere
// in a window, at rates from a third of the limit to forty times it) and checks on the log of
// admitted hits that no interval of length W holds more than the limit, from the first window
// on. It also compares what an exact sliding log would admit on the same arrivals, and logs
// both figures (go test -v): they are documented on slidingWindow.
func TestSlidingWindowNeverExceeds(t *testing.T) {
	rng := rand.New(rand.NewPCG(*seed, 7))
	t.Logf("seed %d", *seed)
	// Admitted by sliding_window and by an exact log, for demand below and above the limit.
	var admitted, exact [2]int
	worst := 0.0
	factors := []float64{0.3, 0.7, 0.95, 1, 1.05, 1.5, 2, 3.7, 10, 40}
	for _, limit := range []int64{1, 2, 3, 5, 7, 10, 13, 50, 100, 1000} {
		for _, w := range []time.Duration{time.Second, 997 * time.Millisecond, 60 * time.Millisecond, time.Minute} {
			if limit > w.Milliseconds() {
				continue
			}
			for range 12 {
				f := factors[rng.IntN(len(factors))] * (0.9 + 0.2*rng.Float64())
				d := max(time.Duration(float64(w)/(float64(limit)*f)), µs)
				d = d.Truncate(µs)
				start := time.Duration(rng.Int64N(w.Microseconds())) * µs
				arrivals := uniform(start, d, 12*w)
				log := runSliding(limit, w, arrivals)
				i := boolInt(f > 1)
				admitted[i] += len(log)
				exact[i] += exactLog(limit, w, arrivals)
				n := maxInWindow(log, w)
				if n > int(limit) {
					t.Errorf("limit %d per %v, one hit every %v from %v: %d admitted within one window",
						limit, w, d, start, n)
				}
				worst = max(worst, float64(n)/float64(limit))
			}
		}
	}
	t.Logf("uniform traffic: the busiest window holds %.2f times the limit; sliding_window admits %.1f%% "+
		"of what an exact sliding log admits (%.1f%% below the limit, %.1f%% above)", worst,
		100*float64(admitted[0]+admitted[1])/float64(exact[0]+exact[1]),
		100*float64(admitted[0])/float64(exact[0]), 100*float64(admitted[1])/float64(exact[1]))
}

// uniform returns the arrival times start, start+d, ... before span.
func uniform(start, d, span time.Duration) []time.Duration {
	var at []time.Duration
	for a := start; a < span; a += d {
		at = append(at, a)
	}
	return at
}

// runSliding runs the twin, one hit per arrival, and returns the admitted times.
func runSliding(limit int64, w time.Duration, arrivals []time.Duration) []time.Duration {
	p := params{limit: limit, windowMs: w.Milliseconds(), hits: 1}
	var state []int64
	var log []time.Duration
	start := epoch.UnixMicro()
	for _, at := range arrivals {
		var r reply
		r, state, _ = slidingWindowTwin(start+at.Microseconds(), state, p)
		if r[0] == 1 {
			log = append(log, at)
		}
	}
	return log
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

// TestTTL checks that every write sets a TTL, and that the TTL is no longer than needed.
func TestTTL(t *testing.T) {
	tests := []struct {
		req  Request
		want time.Duration
	}{
		{Request{Algorithm: FixedWindow, Limit: 5, Window: time.Second, Hits: 1}, 700 * ms},
		{Request{Algorithm: SlidingWindow, Limit: 5, Window: time.Second, Hits: 1}, 2000 * ms},
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
			mr.FastForward(tt.want)
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
	good := Request{Algorithm: SlidingWindow, Key: "k", Limit: 10, Window: time.Second, Hits: 1}
	if err := Check(&good); err != nil {
		t.Errorf("Check(%+v): got %v, want nil", good, err)
	}
	bad := good
	bad.Limit = 1 << 30
	bad.Window = 1 << 30 * ms
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
		{"sliding window product", func(r *Request) { r.Algorithm = SlidingWindow; r.Limit = 1 << 30; r.Window = 1 << 30 * ms }, "too large"},
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
