package algorithms

import (
	_ "embed"
	"fmt"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed priority.lua
var priorityLua string

// ShareUnit is a whole share: Request.Share counts millionths of the limit.
const ShareUnit = 1_000_000

// priority shares one capacity of Limit hits per sliding window between ordered classes, each
// allowed to fill it only up to its own share (Request.Share): as usage rises the classes with
// the lowest shares are refused first, and the most important class (share 1) always finds the
// headroom above the others' shares.
//
// Model: usage is counted exactly as by slidingWindow (20 epoch-aligned sub-windows, a
// sub-window counting while it overlaps the last W), with one counter for every class. A
// request of a class with capacity cap = floor(Limit × Share / ShareUnit) and cost hits > 0 is
// admitted when usage + hits <= cap and charged; otherwise it is refused, with
//   - Shed when usage + hits <= Limit: the capacity that remains is kept for higher classes;
//   - Never when hits > cap: the class can never fit it (no retry-after);
//   - otherwise over the limit.
//
// RetryAfter is exact if nothing else arrives: the time until enough of the oldest sub-windows
// have stopped counting for usage + hits to fit cap. Remaining is max(0, cap - usage) and the
// Limit of the Result is cap, so that grades and headers speak of what the class may use.
// Hits 0 checks (refused when usage is above cap), negative hits refund newest sub-windows
// first, never below zero, and CountRejected charges refused hits, as for slidingWindow.
//
// State: as slidingWindow (a hash of sub-window counts on Redis; the same []int64 layout in the
// twin), under a key of its own. The caller leaves the class out of the key, so that every
// class of the rule shares it.
var priority = algorithm{
	id:       3,
	name:     Priority,
	script:   storage.NewScript(priorityLua),
	replyLen: 6,
	check: func(p params) (params, error) {
		switch {
		case p.share < 0 || p.share > ShareUnit:
			return p, fmt.Errorf("share %d out of range [0, %d]", p.share, ShareUnit)
		case p.share == 0:
			p.share = ShareUnit
		}
		// limit <= 2^40 and share <= 2^20: the product fits an int64.
		p.capacity = p.limit * p.share / ShareUnit
		return p, nil
	},
	args: func(p params) []any { return []any{p.capacity} },
	twin: priorityTwin,
}

func priorityTwin(nowUs int64, state []int64, p params) (reply, []int64, time.Duration) {
	w := p.windowMs
	now := floorDiv(nowUs, 1000)
	bw := max(1, w/slidingBuckets)
	cur := now / bw
	var oldest int64
	if now >= w {
		oldest = (now - w) / bw
	}
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

	newest, first := -1, -1
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
