package algorithms

import (
	_ "embed"
	"fmt"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed sliding_window.lua
var slidingWindowLua string

// slidingWindow approximates a sliding log with two epoch-aligned window counters. Each
// window's count is assumed spread evenly from the offset s of its first charged hit to the
// window's end, so at e ms into the current window the estimate of the hits in the last
// window_ms is prev * (W - max(e, s)) / (W - s) + cur, with s the previous window's. Hits are
// admitted while the estimate, rounded up, plus the hits is at most the limit.
//
// That assumption must not underestimate: a window must not take hits late after few early
// ones (a first hit at 0, then a burst as the previous window slides out). So a window also
// keeps a cap on its final count: at every decision at offset e, with cur hits before it,
// count <= floor(((cur+1) * (W-s) - 1) / (e-s)) (equivalently cur >= floor(count * (e-s) /
// (W-s)), the hits the even spread puts before e). Hits beyond the cap are refused until the
// next window.
//
// remaining = min(limit - estimate rounded up, cap - cur). RetryAfter is the exact earliest
// millisecond at which the same hits would be admitted if nothing else arrives (later in
// this window as prev decays, if the cap still allows, or in a later one); ResetAfter is when
// the estimate reaches zero. A refund comes off the current count, then the previous one,
// never below zero; it leaves s and the cap as they are.
//
// Accuracy, measured by TestSlidingWindowNeverExceeds over uniform streams (rates from 0.3 to
// 40 times the limit, starting anywhere in a window, limits 1 to 1000): no interval of length
// W holds more than the limit, from the first window on. Against an exact sliding log on the
// same arrivals it admits 94-97% as much (over 99% when demand is below the limit, 93-95%
// above it): the rounding up, and the cap.
//
// State: {window index, current count, s of the current window, cap, previous count, s of the
// previous window} (hash fields w, c, fc, cm, p, fp); counts saturate at 2^52 / window_ms, so
// that (count + 1) * window_ms < 2^53. TTL: two windows. limit * window_ms must not exceed
// 2^52. A key written by the former layout {w, c, p} reads as s = 0 and no cap.
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
