package algorithms

import (
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
)

// step is one timed decision of a table. Zero limit, window and burst keep the previous
// step's values; key "" is "k". A dry-run step wants the reply the same step would get
// without dryRun (and never charges refused hits); the backends check that it writes nothing.
type step struct {
	at            time.Duration // since epoch
	hits          int64
	limit         int64
	window        time.Duration
	burst         int64
	countRejected bool
	dryRun        bool
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
			Hits: s.hits, CountRejected: s.countRejected, DryRun: s.dryRun,
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
					t.Errorf("step %d (at %v, hits %d, dry run %t): got %+v, want %+v", i, s.at, s.hits, s.dryRun, got, s.want)
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
		{at: 0, hits: 1, dryRun: true, want: ok(2, 3, 1000*ms)}, // as if charged; nothing stored
		{at: 0, hits: 1, want: ok(2, 3, 1000*ms)},
		{at: 100 * ms, hits: 1, dryRun: true, want: ok(1, 3, 900*ms)},
		{at: 100 * ms, hits: 1, want: ok(1, 3, 900*ms)},
		{at: 250*ms + 500*µs, hits: 0, want: ok(1, 3, 750*ms)}, // a check charges nothing
		{at: 300 * ms, hits: 1, want: ok(0, 3, 700*ms)},        // count + hits == limit passes
		{at: 400 * ms, hits: 1, want: refused(0, 3, 600*ms, 600*ms)},
		{at: 999 * ms, hits: 1, want: refused(0, 3, 1*ms, 1*ms)}, // retry-after - 1ms: refused
		{at: 1000 * ms, hits: 1, want: ok(2, 3, 1000*ms)},        // retry-after: a new window
		{at: 1000 * ms, hits: -5, dryRun: true, want: ok(3, 3, 1000*ms)},
		// The dry refund gave nothing back.
		{at: 1000 * ms, hits: 0, want: ok(2, 3, 1000*ms)},
		{at: 1000 * ms, hits: -5, want: ok(3, 3, 1000*ms)},  // a refund stops at empty
		{at: 1001 * ms, hits: 4, want: never(3, 3, 999*ms)}, // more than the limit: never
		{at: 1002 * ms, hits: 3, want: ok(0, 3, 998*ms)},    // the refusal charged nothing
		// A dry run never charges refused hits: count 3, then 4.
		{at: 1500 * ms, hits: 1, countRejected: true, dryRun: true, want: refused(0, 3, 500*ms, 500*ms)},
		{at: 1500 * ms, hits: 1, countRejected: true, want: refused(0, 3, 500*ms, 500*ms)},
		{at: 1600 * ms, hits: 0, want: refused(0, 3, 400*ms, 400*ms)},            // 4 > 3
		{at: 1700 * ms, hits: -1, want: ok(0, 3, 300*ms)},                        // count 3
		{at: 1800 * ms, hits: 5, countRejected: true, want: never(0, 3, 200*ms)}, // count 8
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
	// 10 per second: buckets of 50ms; bucket b counts until (b+1)*50ms + 1s.
	runTable(t, table{algorithm: SlidingWindow, limit: 10, window: time.Second, steps: []step{
		{at: 0, hits: 1, want: ok(9, 10, 1050*ms)}, // bucket 0 counts until 1050ms
		// A late burst that fits the last second is admitted; then the 10th of it is refused
		// until bucket 0 stops counting.
		{at: 900 * ms, hits: 9, dryRun: true, want: ok(0, 10, 1050*ms)},
		{at: 900 * ms, hits: 9, want: ok(0, 10, 1050*ms)}, // bucket 18 until 1950ms
		{at: 900 * ms, hits: 1, want: refused(0, 10, 1050*ms, 150*ms)},
		{at: 1049*ms + 999*µs, hits: 1, want: refused(0, 10, 901*ms, 1*ms)}, // retry-after - 1ms
		{at: 1050 * ms, hits: 1, want: ok(0, 10, 1050*ms)},                  // retry-after; bucket 21
		{at: 1200 * ms, hits: 0, want: ok(0, 10, 900*ms)},                   // a check charges nothing
		// 3 more need bucket 18's 9 hits gone.
		{at: 1200 * ms, hits: 3, want: refused(0, 10, 900*ms, 750*ms)},
		{at: 1949 * ms, hits: 3, want: refused(0, 10, 151*ms, 1*ms)},
		{at: 1950 * ms, hits: 3, want: ok(6, 10, 1050*ms)},              // bucket 21: 1, bucket 39: 3
		{at: 2000 * ms, hits: 1, want: ok(5, 10, 1050*ms)},              // bucket 40: 1
		{at: 2099 * ms, hits: 0, want: ok(5, 10, 951*ms)},               // bucket 21 still counts
		{at: 2100 * ms, hits: 0, want: ok(6, 10, 950*ms)},               // one bucket drops out
		{at: 2100 * ms, hits: 10, want: refused(6, 10, 950*ms, 950*ms)}, // needs buckets 39 and 40 gone
		{at: 2999 * ms, hits: 0, want: ok(6, 10, 51*ms)},
		{at: 3000 * ms, hits: 0, want: ok(9, 10, 50*ms)}, // the next one
		{at: 3000 * ms, hits: 10, want: refused(9, 10, 50*ms, 50*ms)},
		{at: 3049 * ms, hits: 10, want: refused(9, 10, 1*ms, 1*ms)},
		{at: 3050 * ms, hits: 10, want: ok(0, 10, 1050*ms)}, // bucket 61: 10
		{at: 3100 * ms, hits: -3, want: ok(3, 10, 1000*ms)}, // bucket 61: 7
		{at: 3200 * ms, hits: 2, want: ok(1, 10, 1050*ms)},  // bucket 64: 2
		// A refund comes off the newest bucket first: bucket 64 empties, bucket 61 keeps 5.
		{at: 3200 * ms, hits: -4, dryRun: true, want: ok(5, 10, 900*ms)},
		{at: 3200 * ms, hits: -4, want: ok(5, 10, 900*ms)},
		{at: 3300 * ms, hits: -100, want: ok(10, 10, 0)}, // and stops at empty
		{at: 3300 * ms, hits: 11, want: never(10, 10, 0)},
		{at: 3300 * ms, hits: 11, countRejected: true, want: never(0, 10, 1050*ms)}, // bucket 66: 11
		{at: 3400 * ms, hits: 0, want: refused(0, 10, 950*ms, 950*ms)},              // 11 > 10
		{at: 3400 * ms, hits: -1, want: ok(0, 10, 950*ms)},                          // bucket 66: 10
		// A dry run never charges refused hits: the reply of a plain refusal.
		{at: 3500 * ms, hits: 1, countRejected: true, dryRun: true, want: refused(0, 10, 850*ms, 850*ms)},
		{at: 3500 * ms, hits: 1, countRejected: true, want: refused(0, 10, 1050*ms, 850*ms)}, // bucket 70: 1
		{at: 4349 * ms, hits: 1, want: refused(0, 10, 201*ms, 1*ms)},
		{at: 4350 * ms, hits: 1, want: ok(8, 10, 1050*ms)},
		{at: 9000 * ms, hits: 1, want: ok(9, 10, 1050*ms)}, // stale buckets read as empty
		// 3 per minute: buckets of 3s; 10s is in bucket 3, [9s, 12s).
		{at: 10 * time.Second, hits: 1, limit: 3, window: time.Minute, key: "{t}m", want: ok(2, 3, 62*time.Second)},
		{at: 40 * time.Second, hits: 2, key: "{t}m", want: ok(0, 3, 62*time.Second)},
		{at: 40 * time.Second, hits: 1, key: "{t}m", want: refused(0, 3, 62*time.Second, 32*time.Second)},
		{at: 72 * time.Second, hits: 1, key: "{t}m", want: ok(0, 3, 63*time.Second)}, // bucket 24, [72s, 75s)
		// 2 per 997ms: buckets of 49ms, whose boundaries are 36ms past a multiple of 49ms from
		// the epoch (itself 13ms past one): 20.028s starts one, and a bucket counts until
		// 49ms + 997ms = 1046ms after its start.
		{at: 20028 * ms, hits: 2, limit: 2, window: 997 * ms, key: "{t}997", want: ok(0, 2, 1046*ms)},
		{at: 20540 * ms, hits: 1, key: "{t}997", want: refused(0, 2, 534*ms, 534*ms)},
		{at: 21073 * ms, hits: 1, key: "{t}997", want: refused(0, 2, 1*ms, 1*ms)},
		// The bucket that starts at 20.028s + 21*49ms = 21.057s counts until 22.103s.
		{at: 21074 * ms, hits: 1, key: "{t}997", want: ok(1, 2, 1029*ms)},
	}})
}

func TestTokenBucket(t *testing.T) {
	// 10 per second: one token per 100ms; a burst of 5 (tolerance 500ms).
	runTable(t, table{algorithm: TokenBucket, limit: 10, window: time.Second, burst: 5, steps: []step{
		{at: 0, hits: 1, want: ok(4, 5, 100*ms)},
		{at: 0, hits: 4, dryRun: true, want: ok(0, 5, 500*ms)},
		{at: 0, hits: 4, want: ok(0, 5, 500*ms)}, // the whole burst at once
		{at: 0, hits: 1, want: refused(0, 5, 500*ms, 100*ms)},
		{at: 99 * ms, hits: 1, want: refused(0, 5, 401*ms, 1*ms)},
		{at: 100 * ms, hits: 1, want: ok(0, 5, 500*ms)}, // then the rate
		{at: 350*ms + 500*µs, hits: 0, want: ok(2, 5, 250*ms)},
		{at: 350*ms + 500*µs, hits: 3, want: refused(2, 5, 250*ms, 50*ms)}, // 49.5ms, rounded up
		{at: 399*ms + 500*µs, hits: 3, want: refused(2, 5, 201*ms, 1*ms)},
		{at: 400*ms + 500*µs, hits: 3, want: ok(0, 5, 500*ms)},
		{at: 401 * ms, hits: 6, want: never(0, 5, 499*ms)},
		{at: 401 * ms, hits: -2, dryRun: true, want: ok(2, 5, 299*ms)},
		{at: 401 * ms, hits: -2, want: ok(2, 5, 299*ms)},
		{at: 401 * ms, hits: -100, want: ok(5, 5, 0)}, // a refund stops at full
		{at: 401 * ms, hits: 5, want: ok(0, 5, 500*ms)},
		{at: 1401 * ms, hits: 5, want: ok(0, 5, 500*ms)},
		{at: 1501 * ms, hits: 1, want: ok(0, 5, 500*ms)},
		{at: 1551 * ms, hits: 1, want: refused(0, 5, 450*ms, 50*ms)},
		{at: 1551 * ms, hits: 1, countRejected: true, dryRun: true, want: refused(0, 5, 450*ms, 50*ms)},
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

// TestSlidingWindowForeignFields reads keys holding fields that are not bucket counts: the
// former layout {w, c, fc, cm, p, fp}, non-canonical or stale indices, a bucket of the future,
// a zero or malformed count. They count as nothing and are deleted on the next write.
func TestSlidingWindowForeignFields(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	d := NewRedis(storage.NewRedis(c))
	at := epoch.Add(10*time.Second + 500*ms)
	mr.SetTime(at)
	cur := at.UnixMilli() / 50 // buckets of 50ms
	idx := func(b int64) string { return strconv.FormatInt(b, 10) }
	former := []string{"w", idx(at.UnixMilli() / 1000), "c", "3", "fc", "0", "cm", "9", "p", "4", "fp", "0"}
	foreign := append(former,
		"0"+idx(cur), "5", // not canonical
		idx(cur-21), "5", // stopped counting at (cur-20)*50ms + 1s = now
		idx(cur+1), "5", // the future (another bucket width, or a clock that went back)
		idx(cur-1), "0",
		idx(cur-2), "x",
		idx(cur-20), "2", // the oldest bucket that still counts
	)
	req := Request{Algorithm: SlidingWindow, Key: "{t}old", Limit: 10, Window: time.Second}

	// A check writes nothing; a refund to empty deletes the key.
	mr.HSet(req.Key, former...)
	req.Hits = 0
	if got, want := decideOne(t, d, req), ok(10, 10, 0); got != want {
		t.Errorf("check on the former layout: got %+v, want %+v", got, want)
	}
	req.Hits = -1
	decideOne(t, d, req)
	if mr.Exists(req.Key) {
		t.Errorf("the key of the former layout survived a refund to empty")
	}

	mr.HSet(req.Key, foreign...)
	req.Hits = 1
	if got, want := decideOne(t, d, req), ok(7, 10, 1050*ms); got != want {
		t.Errorf("charge: got %+v, want %+v", got, want)
	}
	keys, err := mr.HKeys(req.Key)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	if want := []string{idx(cur - 20), idx(cur)}; !slices.Equal(keys, want) {
		t.Errorf("fields after the charge: got %v, want %v", keys, want)
	}
	if got, want := mr.TTL(req.Key), 1050*ms; got != want {
		t.Errorf("TTL: got %v, want %v", got, want)
	}
}

// TestSlidingWindowBucketBound checks the bound on the number of buckets that count at once,
// which sizes the twin's buffer: at most 2N for any window, N+1 when N divides the window,
// N+2 otherwise from N*N ms up.
func TestSlidingWindowBucketBound(t *testing.T) {
	for w := int64(1); w <= 5000; w++ {
		bw := max(1, w/slidingBuckets)
		// floor(now/bw) - floor((now-w)/bw) + 1 is largest when now is at the start of a bucket.
		k := w/bw + 1
		if w%bw != 0 {
			k++
		}
		big := w%slidingBuckets != 0 && w >= slidingBuckets*slidingBuckets
		if k > 2*slidingBuckets || (w%slidingBuckets == 0 && k != slidingBuckets+1) || (big && k != slidingBuckets+2) {
			t.Fatalf("window %dms, buckets of %dms: %d buckets count at once", w, bw, k)
		}
	}
}
