package algorithms

import "fmt"

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
// It is slidingWindow's script and twin with the class capacity in place of the limit: the same
// state (a hash of sub-window counts on Redis; the same []int64 layout in the twin), under a
// key of its own. The caller leaves the class out of the key, so that every
// class of the rule shares it.
var priority = algorithm{
	id:       3,
	name:     Priority,
	script:   slidingWindowScript,
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
	args: capacityArg,
	twin: slidingWindowTwin,
}
