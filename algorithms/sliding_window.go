package algorithms

import (
	_ "embed"
	"fmt"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed sliding_window.lua
var slidingWindowLua string

// slidingWindow approximates a sliding log with two epoch-aligned window counters: at e ms
// into the current window, the estimate of the hits in the last window_ms is
// prev * (W - e) / W + cur, which assumes the previous window's hits were spread evenly.
// Hits are admitted while the estimate, rounded up, plus the hits is at most the limit;
// remaining = limit - estimate rounded up. RetryAfter is the exact earliest millisecond at
// which the same hits would be admitted if nothing else arrives (later in this window as prev
// decays, or in a later one); ResetAfter is when the estimate reaches zero. A refund comes off
// the current count, then the previous one, never below zero.
//
// Accuracy, measured by TestSlidingWindowNeverExceeds over uniform streams at rates below, at
// and far above the limit: from the third window of a stream on, no interval of length W
// holds more than the limit; in the first two windows a stream that starts mid-window can get
// up to about 1.8 times the limit through (the estimate assumes the previous window's hits
// were spread evenly, and they were bunched). Rounding the estimate up costs about 3% of what
// an exact sliding log would admit.
//
// State: {window index, current count, previous count}; counts saturate at 2^52 / window_ms.
// TTL: two windows. limit * window_ms must not exceed 2^52.
var slidingWindow = algorithm{
	id:     1,
	name:   SlidingWindow,
	script: storage.NewScript(slidingWindowLua),
	check: func(p params) (params, error) {
		if p.limit > maxProduct/p.windowMs {
			return p, fmt.Errorf("limit %d per %dms is too large (limit * window_ms > 2^52)", p.limit, p.windowMs)
		}
		return p, nil
	},
	twin: slidingWindowTwin,
}

func slidingWindowTwin(nowUs int64, state []int64, p params) (reply, []int64, time.Duration) {
	w := p.windowMs
	now := floorDiv(nowUs, 1000)
	maxCount := floorDiv(maxProduct, w)
	idx := floorDiv(now, w)
	e := now - idx*w
	cur, fc, cm, prev, fp := int64(0), int64(0), maxCount, int64(0), int64(0)
	if len(state) == 6 {
		switch state[0] {
		case idx:
			cur, fc, cm, prev, fp = state[1], state[2], state[3], state[4], state[5]
		case idx - 1:
			prev, fp = state[1], state[2]
		}
	}
	fc = min(max(fc, 0), w-1)
	fp = min(max(fp, 0), w-1)
	weighted := func(n, x int64) int64 { return ceilDiv(n*(w-max(x, fp)), w-fp) }
	// capAt is the cap the hits before offset x (all cur of them) put on the final count.
	capAt := func(x int64) int64 { return floorDiv((cur+1)*(w-fc)-1, x-fc) }

	if cur > 0 && e > fc {
		cm = min(cm, capAt(e))
	}
	nc, np := cur+p.hits, prev
	if nc < 0 {
		np = max(0, prev+nc)
		nc = 0
	}
	allowed := weighted(np, e)+nc <= p.limit && !(p.hits > 0 && cur > 0 && nc > cm)
	if allowed || p.hits <= 0 || p.countRejected == 1 {
		if cur == 0 && nc > 0 {
			fc, cm = e, maxCount
		}
		cur = min(nc, maxCount)
		prev = np
	}

	var retry int64
	if !allowed && p.hits <= p.limit {
		h := max(p.hits, 0)
		r := p.limit - cur - h
		x := w
		if r >= 0 {
			// Later in this window, once the previous count has decayed to r, if the cap allows.
			x = e
			if prev > r {
				x = max(e, w-floorDiv(r*(w-fp), prev))
			}
			if h > 0 && cur > 0 && (cur+h > cm || (x > fc && cur+h > capAt(x))) {
				x = w
			}
		}
		if x < w {
			retry = x - e
		} else {
			// In the next window, where cur becomes the previous count, spread from fc.
			var e2 int64
			if cur > p.limit-h {
				e2 = w - floorDiv((p.limit-h)*(w-fc), cur)
			}
			retry = w - e + e2
		}
	}

	var reset int64
	switch {
	case cur > 0:
		reset = 2*w - e
	case prev > 0:
		reset = w - e
	}
	if cur == 0 {
		fc, cm = 0, 0
	}
	remaining := p.limit - cur - weighted(prev, e)
	if cur > 0 {
		remaining = min(remaining, cm-cur)
	}
	r := reply{boolInt(allowed), max(remaining, 0), p.limit, reset, retry}
	if reset == 0 {
		return r, nil, 0
	}
	next := stateOf(state, 6)
	next[0], next[1], next[2], next[3], next[4], next[5] = idx, cur, fc, cm, prev, fp
	return r, next, time.Duration(2*w) * time.Millisecond
}
