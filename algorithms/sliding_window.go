package algorithms

import (
	_ "embed"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed sliding_window.lua
var slidingWindowLua string

// slidingBuckets is N, the number of sub-windows a sliding window is divided into.
const slidingBuckets = 20

// slidingWindow counts hits in sub-windows ("buckets") and admits while the buckets that
// overlap the sliding window hold room for the hits.
//
// Model: a window of W ms is divided into N = 20 buckets of bw = max(1, floor(W/N)) ms,
// epoch-aligned: bucket b = floor(now_ms / bw) covers [b*bw, (b+1)*bw). A bucket counts while
// it intersects the sliding window (now - W, now], that is while now_ms < (b+1)*bw + W, and the
// count is the sum of the counted buckets. Hits are admitted when count + hits <= limit and
// charged to the current bucket; refused hits are charged only with CountRejected. Hits 0
// checks (refused when the count is over the limit: after a CountRejected charge, or with a
// lowered limit); negative hits refund, newest buckets first, never below zero. Hits beyond the
// limit are refused for good (Never). remaining = limit - count; RetryAfter is exact if nothing
// else arrives: the time until enough of the oldest buckets have stopped counting for the hits
// to fit; ResetAfter is the time until the newest bucket with hits stops counting (0 when
// empty). Buckets of the future (a clock gone back, another bucket width) do not count.
//
// Guarantee: no interval of length W, starting anywhere, ever holds more than the limit of
// admitted hits, for any traffic, from the first window on (every hit less than W before a
// decision is in a counted bucket). Conversely a refusal means the counted buckets, which lie
// within the last W + bw, already hold more than limit - hits: the error is the rounding of
// the window's start out to a bucket boundary, less than bw. A burst that fits the limit over
// the last W is admitted even if it comes at the end of a window after an early hit.
//
// Accuracy, measured by TestSlidingWindowNeverExceeds against an exact sliding log on the same
// arrivals (seeds 1 to 5; limits 1 to 1000; windows of 7ms to a minute, shares tallied from
// 60ms up; uniform streams starting anywhere in a window, and bursty random streams): no
// interval of length W ever held more than the limit. Of what the log admits, it admits 100%
// of uniform demand below the limit (up to 0.95 times it), 95.3-95.4% at the limit (about
// N/(N+1): a steady stream sees W + bw of history), 94.5-97.1% above it (1.05 to 42 times the
// limit) and 96.0-99.0% of bursty demand. Windows under 20ms have buckets of 1ms, coarser
// than W/N, and admit less (about 88% at the limit for 7ms).
//
// State: the counts of the buckets that still count, at most ceil(W/bw) + 1 of them: N+1 when N
// divides W (as whole seconds do), else N+2 for W >= N*N ms and at most 2N below.
// Redis: a hash {decimal bucket index: count}, zero counts and stale or foreign fields
// (including the former {w, c, fc, cm, p, fp} layout) deleted on every write, the key deleted
// when empty. The twin: {newest bucket index with hits, its count, the count of the bucket
// before it, ..., down to the oldest counted bucket with hits}. Expiry is an optimisation,
// never needed for correctness: TTL ResetAfter. The total saturates at 2^52, so every value
// stays an exact integer below 2^53 and no bound on limit * W is needed.
var slidingWindow = algorithm{
	id:       1,
	name:     SlidingWindow,
	script:   slidingWindowScript,
	replyLen: replyLen + 1,
	check: func(p params) (params, error) {
		p.capacity = p.limit
		return p, nil
	},
	args: capacityArg,
	twin: slidingWindowTwin,
}

// slidingWindowScript decides both sliding_window and priority, which is a sliding window
// whose capacity is the request's class's part of the limit.
var slidingWindowScript = storage.NewScript(slidingWindowLua)

// capacityArg is the script's ARGV[6]: the capacity the hits must fit.
func capacityArg(p params) []any { return []any{p.capacity} }

func slidingWindowTwin(nowUs int64, state []int64, p params) (reply, []int64, time.Duration) {
	w := p.windowMs
	now := floorDiv(nowUs, 1000)
	bw := max(1, w/slidingBuckets)
	cur := now / bw
	var oldest int64
	if now >= w {
		oldest = (now - w) / bw
	}
	// c[i] is the count of bucket oldest+i; at most 2N buckets count (see slidingWindow).
	var buf [2*slidingBuckets + 1]int64
	c := buf[:cur-oldest+1]
	k := len(c)
	if len(state) >= 2 {
		for i, n := range state[1:] {
			b := state[0] - int64(i)
			if b < oldest {
				break
			}
			if b <= cur && n > 0 {
				c[b-oldest] = n
			}
		}
	}
	var count int64
	for _, n := range c {
		count += n
	}

	var allowed, shed bool
	capacity := p.capacity
	if p.hits > 0 {
		allowed = count+p.hits <= capacity
		shed = !allowed && p.hits <= capacity && count+p.hits <= p.limit
		if allowed || p.countRejected == 1 {
			add := min(p.hits, maxProduct-count)
			c[k-1] += add
			count += add
		}
	} else {
		owed := -p.hits
		for i := k - 1; i >= 0 && owed > 0; i-- {
			take := min(c[i], owed)
			c[i] -= take
			owed -= take
			count -= take
		}
		allowed = count <= capacity
		shed = !allowed && count <= p.limit
	}

	var retry int64
	if !allowed && p.hits <= capacity {
		need := count + max(p.hits, 0) - capacity
		for i, n := range c {
			if need -= n; need <= 0 {
				retry = (oldest+int64(i)+1)*bw + w - now
				break
			}
		}
	}

	newest, first := -1, -1 // the newest and oldest buckets with hits, as indices into c
	for i, n := range c {
		if n > 0 {
			newest = i
			if first < 0 {
				first = i
			}
		}
	}
	r := reply{boolInt(allowed), max(capacity-count, 0), capacity, 0, retry, boolInt(shed)}
	if newest < 0 {
		return r, nil, 0
	}
	r[3] = (oldest+int64(newest)+1)*bw + w - now
	next := stateOf(state, newest-first+2)
	next[0] = oldest + int64(newest)
	for i := newest; i >= first; i-- {
		next[1+newest-i] = c[i]
	}
	return r, next, time.Duration(r[3]) * time.Millisecond
}
