package algorithms

import (
	_ "embed"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed fixed_window.lua
var fixedWindowLua string

// fixedWindow counts hits per epoch-aligned window: window index floor(now_ms / window_ms),
// the count starting from zero when the index changes. It answers like envoyproxy/ratelimit:
// over when count + hits > limit; remaining = limit - count; reset after W - now mod W;
// refused hits are not charged unless CountRejected. A refusal retries at the next window,
// unless the hits exceed the limit (Never).
//
// State: {window index, count}; the count saturates at 2^52. TTL: the rest of the window.
var fixedWindow = algorithm{
	id:     0,
	name:   FixedWindow,
	script: storage.NewScript(fixedWindowLua),
	check:  func(p params) (params, error) { return p, nil },
	twin:   fixedWindowTwin,
}

func fixedWindowTwin(nowUs int64, state []int64, p params) (reply, []int64, time.Duration) {
	now := floorDiv(nowUs, 1000)
	idx := floorDiv(now, p.windowMs)
	reset := p.windowMs - (now - idx*p.windowMs)
	var count int64
	if len(state) == 2 && state[0] == idx {
		count = state[1]
	}
	after := max(count+p.hits, 0)
	allowed := after <= p.limit
	if allowed || p.hits <= 0 || p.countRejected == 1 {
		count = min(after, maxProduct)
	}
	var retry int64
	if !allowed && p.hits <= p.limit {
		retry = reset
	}
	r := reply{boolInt(allowed), max(p.limit-count, 0), p.limit, reset, retry}
	if count == 0 {
		return r, nil, 0
	}
	next := stateOf(state, 2)
	next[0], next[1] = idx, count
	return r, next, time.Duration(reset) * time.Millisecond
}
