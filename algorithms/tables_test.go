package algorithms

import (
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
)

// step is one timed decision of a table. Zero limit, window and burst keep the previous
// step's values; key "" is "k".
type step struct {
	at            time.Duration // since epoch
	hits          int64
	limit         int64
	window        time.Duration
	burst         int64
	countRejected bool
	key           string
	want          Result
}

type table struct {
	algorithm Name
	limit     int64
	window    time.Duration
	burst     int64
	steps     []step
}

// requests expands the table into one request per step.
func (tb *table) requests() []Request {
	reqs := make([]Request, len(tb.steps))
	limit, window, burst := tb.limit, tb.window, tb.burst
	for i, s := range tb.steps {
		if s.limit != 0 {
			limit = s.limit
		}
		if s.window != 0 {
			window = s.window
		}
		if s.burst != 0 {
			burst = s.burst
		}
		key := s.key
		if key == "" {
			key = "{t}k"
		}
		reqs[i] = Request{
			Algorithm: tb.algorithm, Key: key, Limit: limit, Window: window, Burst: burst,
			Hits: s.hits, CountRejected: s.countRejected,
		}
	}
	return reqs
}

// runTable runs tb against every backend; each must give exactly the table's results.
func runTable(t *testing.T, tb table) {
	t.Helper()
	reqs := tb.requests()
	for _, bm := range backends() {
		t.Run(bm.name, func(t *testing.T) {
			b := bm.make(t)
			for i, s := range tb.steps {
				got := b.decide(t, epoch.Add(s.at), reqs[i])
				if got != s.want {
					t.Errorf("step %d (at %v, hits %d): got %+v, want %+v", i, s.at, s.hits, got, s.want)
				}
			}
		})
	}
}

const (
	ms = time.Millisecond
	µs = time.Microsecond
)

// ok is an admitted result; refused a refused one.
func ok(remaining, limit int64, reset time.Duration) Result {
	return Result{Allowed: true, Remaining: remaining, Limit: limit, ResetAfter: reset}
}

func refused(remaining, limit int64, reset, retry time.Duration) Result {
	return Result{Remaining: remaining, Limit: limit, ResetAfter: reset, RetryAfter: retry}
}

func never(remaining, limit int64, reset time.Duration) Result {
	return Result{Remaining: remaining, Limit: limit, ResetAfter: reset, Never: true}
}

func TestFixedWindow(t *testing.T) {
	runTable(t, table{algorithm: FixedWindow, limit: 3, window: time.Second, steps: []step{
		{at: 0, hits: 1, want: ok(2, 3, 1000*ms)},
		{at: 100 * ms, hits: 1, want: ok(1, 3, 900*ms)},
		{at: 250*ms + 500*µs, hits: 0, want: ok(1, 3, 750*ms)}, // a check charges nothing
		{at: 300 * ms, hits: 1, want: ok(0, 3, 700*ms)},        // count + hits == limit passes
		{at: 400 * ms, hits: 1, want: refused(0, 3, 600*ms, 600*ms)},
		{at: 999 * ms, hits: 1, want: refused(0, 3, 1*ms, 1*ms)},                           // retry-after - 1ms: refused
		{at: 1000 * ms, hits: 1, want: ok(2, 3, 1000*ms)},                                  // retry-after: a new window
		{at: 1000 * ms, hits: -5, want: ok(3, 3, 1000*ms)},                                 // a refund stops at empty
		{at: 1001 * ms, hits: 4, want: never(3, 3, 999*ms)},                                // more than the limit: never
		{at: 1002 * ms, hits: 3, want: ok(0, 3, 998*ms)},                                   // the refusal charged nothing
		{at: 1500 * ms, hits: 1, countRejected: true, want: refused(0, 3, 500*ms, 500*ms)}, // count 4
		{at: 1600 * ms, hits: 0, want: refused(0, 3, 400*ms, 400*ms)},                      // 4 > 3
		{at: 1700 * ms, hits: -1, want: ok(0, 3, 300*ms)},                                  // count 3
		{at: 1800 * ms, hits: 5, countRejected: true, want: never(0, 3, 200*ms)},           // count 8
		{at: 2000*ms + 250*µs, hits: 1, want: ok(2, 3, 1000*ms)},
		{at: 5000 * ms, hits: 1, want: ok(2, 3, 1000*ms)}, // a stale window reads as empty
		{at: 60 * time.Second, hits: 1, limit: 10, window: time.Minute, want: ok(9, 10, 60*time.Second)},
		{at: 90*time.Second + 1*µs, hits: 9, want: ok(0, 10, 30*time.Second)},
		{at: 119*time.Second + 999*ms + 999*µs, hits: 1, want: refused(0, 10, 1*ms, 1*ms)},
		{at: 120 * time.Second, hits: 10, want: ok(0, 10, 60*time.Second)},
		{at: 120 * time.Second, hits: 1, key: "{t}other", want: ok(9, 10, 60*time.Second)},
	}})
}

func TestSlidingWindow(t *testing.T) {
	runTable(t, table{algorithm: SlidingWindow, limit: 10, window: time.Second, steps: []step{
		// The first hit of window 0 is at 600ms: its count is spread over [600ms, 1000ms).
		{at: 600 * ms, hits: 4, want: ok(6, 10, 1400*ms)},
		// The cap at 800ms: 4 hits before it allow at most floor((5*400-1)/200) = 9 in all.
		{at: 800 * ms, hits: 3, want: ok(2, 10, 1200*ms)},
		// 10 > 9: refused by the cap until the next window, where ceil(7*400/400) + 3 = 10.
		{at: 900 * ms, hits: 3, want: refused(2, 10, 1100*ms, 100*ms)},
		{at: 999 * ms, hits: 3, want: refused(1, 10, 1001*ms, 1*ms)}, // the cap is now 8
		{at: 1000 * ms, hits: 3, want: ok(0, 10, 2000*ms)},
		// Before 1600ms all 7 previous hits count (an even spread from 0 would count 5):
		// 7 + 3 + 1 > 10 until ceil(7 * (1000 - e)/400) <= 6, at e = 658.
		{at: 1300 * ms, hits: 1, want: refused(0, 10, 1700*ms, 358*ms)},
		{at: 1657 * ms, hits: 1, want: refused(0, 10, 1343*ms, 1*ms)},
		{at: 1658 * ms, hits: 1, want: ok(0, 10, 1342*ms)}, // the cap at 658: floor(3999/658) = 6
		// ceil(7*10/400) + 4 + 2 = 7, but the cap at 990 is floor(4999/990) = 5.
		{at: 1990 * ms, hits: 2, want: refused(1, 10, 1010*ms, 10*ms)},
		{at: 1990 * ms, hits: 1, want: ok(0, 10, 1010*ms)},
		// The first hit of window 1 was at 0: its 5 hits are spread over the whole window.
		{at: 2000 * ms, hits: 10, want: refused(5, 10, 1000*ms, 1000*ms)},
		{at: 2999 * ms, hits: 10, want: refused(9, 10, 1*ms, 1*ms)}, // ceil(5 * 1/1000) + 10
		{at: 3000 * ms, hits: 10, want: ok(0, 10, 2000*ms)},
		{at: 3500 * ms, hits: -3, want: ok(3, 10, 1500*ms)},
		// The refund empties the current count, then takes 2 from the previous one.
		{at: 4200 * ms, hits: -2, want: ok(6, 10, 800*ms)},
		{at: 4200 * ms, hits: -100, want: ok(10, 10, 0)},
		{at: 4300 * ms, hits: 11, want: never(10, 10, 0)},
		{at: 4300 * ms, hits: 11, countRejected: true, want: never(0, 10, 1700*ms)}, // cur 11 from 300ms
		// 11 > 10 until ceil(11 * (1000 - e)/700) <= 10, at e = 364 of the next window.
		{at: 4400 * ms, hits: 0, want: refused(0, 10, 1600*ms, 964*ms)},
		{at: 5363 * ms, hits: 0, want: refused(0, 10, 637*ms, 1*ms)},
		{at: 5364 * ms, hits: 0, want: ok(0, 10, 636*ms)},
		// Charged although refused (cur 1 from 364ms): ceil(11 * 509/700) + 1 + 1 = 10 at e = 491.
		{at: 5364 * ms, hits: 1, countRejected: true, want: refused(0, 10, 1636*ms, 127*ms)},
		{at: 5490 * ms, hits: 1, want: refused(0, 10, 1510*ms, 1*ms)},
		{at: 5491 * ms, hits: 1, want: ok(0, 10, 1509*ms)},
		{at: 9000 * ms, hits: 1, want: ok(9, 10, 2000*ms)}, // stale windows read as empty
		{at: 10000 * ms, hits: 1, limit: 3, window: time.Minute, key: "{t}m", want: ok(2, 3, 120*time.Second-10*time.Second)},
		// A stream that starts late in a window: all 10 hits count until 900ms of the next
		// window (an even spread from 0 would count 9 at 100ms and admit an 11th hit within
		// one second); then ceil(10 * (1000 - e)/100) + 1 <= 10 at e = 910.
		{at: 10900 * ms, hits: 10, limit: 10, window: time.Second, key: "{t}tail", want: ok(0, 10, 1100*ms)},
		{at: 11100 * ms, hits: 1, key: "{t}tail", want: refused(0, 10, 900*ms, 810*ms)},
		{at: 11909 * ms, hits: 1, key: "{t}tail", want: refused(0, 10, 91*ms, 1*ms)},
		{at: 11910 * ms, hits: 1, key: "{t}tail", want: ok(0, 10, 1090*ms)},
	}})
}

func TestTokenBucket(t *testing.T) {
	// 10 per second: one token per 100ms; a burst of 5 (tolerance 500ms).
	runTable(t, table{algorithm: TokenBucket, limit: 10, window: time.Second, burst: 5, steps: []step{
		{at: 0, hits: 1, want: ok(4, 5, 100*ms)},
		{at: 0, hits: 4, want: ok(0, 5, 500*ms)}, // the whole burst at once
		{at: 0, hits: 1, want: refused(0, 5, 500*ms, 100*ms)},
		{at: 99 * ms, hits: 1, want: refused(0, 5, 401*ms, 1*ms)},
		{at: 100 * ms, hits: 1, want: ok(0, 5, 500*ms)}, // then the rate
		{at: 350*ms + 500*µs, hits: 0, want: ok(2, 5, 250*ms)},
		{at: 350*ms + 500*µs, hits: 3, want: refused(2, 5, 250*ms, 50*ms)}, // 49.5ms, rounded up
		{at: 399*ms + 500*µs, hits: 3, want: refused(2, 5, 201*ms, 1*ms)},
		{at: 400*ms + 500*µs, hits: 3, want: ok(0, 5, 500*ms)},
		{at: 401 * ms, hits: 6, want: never(0, 5, 499*ms)},
		{at: 401 * ms, hits: -2, want: ok(2, 5, 299*ms)},
		{at: 401 * ms, hits: -100, want: ok(5, 5, 0)}, // a refund stops at full
		{at: 401 * ms, hits: 5, want: ok(0, 5, 500*ms)},
		{at: 1401 * ms, hits: 5, want: ok(0, 5, 500*ms)},
		{at: 1501 * ms, hits: 1, want: ok(0, 5, 500*ms)},
		{at: 1551 * ms, hits: 1, want: refused(0, 5, 450*ms, 50*ms)},
		{at: 1551 * ms, hits: 1, countRejected: true, want: refused(0, 5, 550*ms, 150*ms)},
		{at: 1551 * ms, hits: 6, countRejected: true, want: never(0, 5, 1000*ms)}, // debt capped at one burst
		{at: 1551 * ms, hits: 0, want: refused(0, 5, 1000*ms, 500*ms)},
	}})
}

func TestTokenBucketRoundedInterval(t *testing.T) {
	// 3 per second: one token per ceil(1e6/3) = 333334µs; Burst 0 means Limit.
	runTable(t, table{algorithm: TokenBucket, limit: 3, window: time.Second, steps: []step{
		{at: 10 * time.Second, hits: 1, want: ok(2, 3, 334*ms)},
		{at: 10 * time.Second, hits: 2, want: ok(0, 3, 1001*ms)},
		{at: 10 * time.Second, hits: 1, want: refused(0, 3, 1001*ms, 334*ms)},
		{at: 10*time.Second + 333*ms, hits: 1, want: refused(0, 3, 668*ms, 1*ms)},
		{at: 10*time.Second + 334*ms, hits: 1, want: ok(0, 3, 1000*ms)},
		{at: 10*time.Second + 334*ms, hits: 4, want: never(0, 3, 1000*ms)},
	}})
}

// TestSlidingWindowFormerLayout reads a key written by the former {w, c, p} layout: the
// missing offsets read as 0 and the missing cap as none.
func TestSlidingWindowFormerLayout(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	d := NewRedis(storage.NewRedis(c))
	at := epoch.Add(10*time.Second + 500*ms)
	mr.SetTime(at)
	mr.HSet("{t}old", "w", strconv.FormatInt(at.UnixMilli()/1000, 10), "c", "3", "p", "4")
	// ceil(4 * 500/1000) + 3 + 1 = 6 <= 10; the cap from 500ms is floor((4*1000-1)/500) = 7.
	got := decideOne(t, d, Request{Algorithm: SlidingWindow, Key: "{t}old", Limit: 10, Window: time.Second, Hits: 1})
	if want := ok(3, 10, 1500*ms); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
