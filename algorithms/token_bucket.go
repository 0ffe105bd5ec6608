package algorithms

import (
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed token_bucket.lua
var tokenBucketLua string

// tokenBucket is GCRA, the token bucket in one number: the theoretical arrival time (TAT,
// Unix microseconds). A token is emitted every T = ceil(window_us / limit) microseconds (the
// rounding errs on the side of refusal) and the bucket holds Burst tokens (Limit when Burst
// is zero), so the tolerance is tau = T * Burst. n hits at now are admitted when
// max(TAT, now) + n*T - now <= tau. Remaining is the whole tokens left; ResetAfter is the time
// until the bucket is full (TAT - now) and RetryAfter the exact time until n hits fit, both
// in milliseconds rounded up. More hits than Burst can never pass (Never). A refund moves the
// TAT back, never before now (a full bucket). Charged refusals (CountRejected) may put the
// bucket in debt by at most one burst.
//
// State: {TAT}. TTL: until the bucket is full. T * Burst must not exceed 2^50 µs.
var tokenBucket = algorithm{
	id:     2,
	name:   TokenBucket,
	script: storage.NewScript(tokenBucketLua),
	check: func(p params) (params, error) {
		if p.limit == 0 {
			return p, errors.New("limit must be positive")
		}
		if p.burst == 0 {
			p.burst = p.limit
		}
		if t := ceilDiv(p.windowMs*1000, p.limit); p.burst > maxProduct/4/t {
			return p, fmt.Errorf("burst %d at one per %dµs is too large (tolerance > 2^50µs)", p.burst, t)
		}
		return p, nil
	},
	twin: tokenBucketTwin,
}

func tokenBucketTwin(now int64, state []int64, p params) (reply, []int64, time.Duration) {
	interval := ceilDiv(p.windowMs*1000, p.limit)
	tau := interval * p.burst
	tat := now
	if len(state) == 1 {
		tat = max(state[0], now)
	}
	var next int64
	if p.hits >= 0 {
		next = tat + min(p.hits, 2*p.burst)*interval
	} else {
		next = max(now, tat+max(p.hits, -p.burst)*interval)
	}
	allowed := next-now <= tau
	if allowed || p.hits <= 0 || p.countRejected == 1 {
		tat = min(next, now+2*tau)
	}

	var retry int64
	if !allowed && p.hits <= p.burst {
		retry = ceilDiv(tat+max(p.hits, 0)*interval-tau-now, 1000)
	}
	reset := ceilDiv(tat-now, 1000)
	var remaining int64
	if left := tau - (tat - now); left > 0 {
		remaining = floorDiv(left, interval)
	}
	r := reply{boolInt(allowed), remaining, p.burst, reset, retry}
	if tat <= now {
		return r, nil, 0
	}
	s := stateOf(state, 1)
	s[0] = tat
	return r, s, time.Duration(reset) * time.Millisecond
}
