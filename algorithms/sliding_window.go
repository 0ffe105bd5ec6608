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
	var cur, prev int64
	if len(state) == 3 {
		switch state[0] {
		case idx:
			cur, prev = state[1], state[2]
		case idx - 1:
			prev = state[1]
		}
	}

	nc, np := cur+p.hits, prev
	if nc < 0 {
		np = max(0, prev+nc)
		nc = 0
	}
	allowed := ceilDiv(np*(w-e), w)+nc <= p.limit
	if allowed || p.hits <= 0 || p.countRejected == 1 {
		cur = min(nc, maxCount)
		prev = np
	}

	var retry int64
	if !allowed && p.hits <= p.limit {
		h := max(p.hits, 0)
		r := p.limit - cur - h
		var f int64
		if r >= 0 && prev > 0 {
			f = floorDiv(r*w, prev)
		}
		if f > 0 {
			retry = w - f - e
		} else {
			var e2 int64
			if cur > 0 {
				e2 = max(0, w-floorDiv((p.limit-h)*w, cur))
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
	remaining := max(p.limit-cur-ceilDiv(prev*(w-e), w), 0)
	r := reply{boolInt(allowed), remaining, p.limit, reset, retry}
	if reset == 0 {
		return r, nil, 0
	}
	next := stateOf(state, 3)
	next[0], next[1], next[2] = idx, cur, prev
	return r, next, time.Duration(2*w) * time.Millisecond
}
