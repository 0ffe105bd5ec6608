package algorithms

import (
	"context"
	"errors"
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
	}{
		{FixedWindow, 5, time.Second, 0},
		{FixedWindow, 1, 250 * time.Millisecond, 0},
		{SlidingWindow, 7, time.Second, 0},
		{SlidingWindow, 100, 3 * time.Second, 0},
		{SlidingWindow, 3, 997 * time.Millisecond, 0},
		{TokenBucket, 10, time.Second, 4},
		{TokenBucket, 7, 3 * time.Second, 0},
		{TokenBucket, 1000, time.Second, 50},
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
			for i := range 300 {
				at += time.Duration(rng.Int64N(int64(c.window / 2)))
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

// TestSlidingWindowNeverExceeds offers uniform traffic (one hit every d from a phase p, at
// rates below, at and far above the limit) and checks against the exact log of admitted hits
// that, once the stream has run for two windows, no interval of length W holds more than the
// limit. The first two windows are a transient: the estimate assumes the previous window's
// hits were spread evenly, and a stream that starts mid-window has bunched them. The test
// measures that transient overshoot, and how much less than an exact sliding log the
// estimate admits, and logs both (go test -v): they are documented on slidingWindow.
func TestSlidingWindowNeverExceeds(t *testing.T) {
	var offered, admitted, exact int
	worstTransient := 0.0
	for _, limit := range []int64{1, 2, 3, 5, 7, 10, 13, 50, 100} {
		for _, w := range []time.Duration{time.Second, 997 * time.Millisecond} {
			per := w / time.Duration(limit)
			for _, d := range []time.Duration{1 * ms, 7 * ms, 13 * ms, 50 * ms, 99 * ms, 101*ms + 300*µs, 333 * ms,
				per, w / time.Duration(limit+1), per + 1*ms, per + 3*per/2} {
				for _, phase := range []time.Duration{0, 1 * ms, 499 * ms, 998*ms + 500*µs} {
					log, n := runUniform(limit, w, d, phase, 12*w)
					offered += n
					admitted += len(log)
					exact += exactLog(limit, w, d, phase, 12*w)
					cut := 0
					for cut < len(log) && log[cut] < phase+2*w {
						cut++
					}
					if worst := maxInWindow(log[cut:], w); worst > int(limit) {
						t.Errorf("limit %d per %v, one hit every %v from %v: %d admitted within one window",
							limit, w, d, phase, worst)
					}
					worstTransient = max(worstTransient, float64(maxInWindow(log, w))/float64(limit))
				}
			}
		}
	}
	t.Logf("uniform traffic: offered %d, an exact sliding log admits %d, sliding_window admits %d (%.1f%%); "+
		"in the first two windows up to %.2f times the limit",
		offered, exact, admitted, 100*float64(admitted)/float64(exact), worstTransient)
}

// runUniform runs the twin on uniform arrivals for span and returns the admitted times.
func runUniform(limit int64, w, d, phase, span time.Duration) (log []time.Duration, offered int) {
	p := params{limit: limit, windowMs: w.Milliseconds(), hits: 1}
	var state []int64
	start := epoch.UnixMicro()
	for at := phase; at < span; at += d {
		var r reply
		r, state, _ = slidingWindowTwin(start+at.Microseconds(), state, p)
		offered++
		if r[0] == 1 {
			log = append(log, at)
		}
	}
	return log, offered
}

// exactLog counts what an exact sliding log would admit on the same arrivals.
func exactLog(limit int64, w, d, phase, span time.Duration) int {
	var log []time.Duration
	for at := phase; at < span; at += d {
		n := 0
		for _, a := range log {
			if a > at-w {
				n++
			}
		}
		if int64(n) < limit {
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
