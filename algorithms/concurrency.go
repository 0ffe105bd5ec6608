package algorithms

import (
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed concurrency.lua
var concurrencyLua string

// MaxSlots is the largest number of slots of a concurrency limit: every live lease is one
// member of the key's sorted set (and two integers of the twin's state).
const MaxSlots = 100_000

// concurrency limits how many leases hold a slot at once: Limit slots per key. A lease
// (Request.Lease, any positive integer; the server draws them at random) takes a slot with
// Hits 1 until Window (the lease's TTL) has passed or it gives the slot back with Hits -1,
// whichever comes first, so a holder that dies cannot leak a slot for longer than its TTL.
// Hits 0 checks whether one more lease would be admitted now, and changes nothing.
//
// Time is in whole milliseconds of the store's clock: a lease taken at now with TTL ttl is live
// while now < now + ttl. An acquire is admitted when the lease already holds a slot of the key
// (it is renewed: its expiry becomes now + ttl) or live + 1 <= Limit. A release is "allowed"
// when the lease held a live slot of the key and false otherwise (unknown or expired).
//
// Reply: Remaining is the free slots after the decision, Limit the slots, ResetAfter the time
// until the last live lease expires (all slots free), and RetryAfter, on a refused acquire or
// check, the exact time until the earliest live lease expires. Limit is at least 1, so an
// acquire is never Never. CountRejected and Burst are ignored.
//
// State on Redis: a sorted set of lease ids scored by expiry (Unix ms) under the request's key,
// whose PEXPIRE is the latest expiry. The twin keeps {id, expiry, id, expiry, ...}.
var concurrency = algorithm{
	id:     5,
	name:   Concurrency,
	script: storage.NewScript(concurrencyLua),
	check: func(p params) (params, error) {
		switch {
		case p.limit < 1 || p.limit > MaxSlots:
			return p, fmt.Errorf("limit %d out of range [1, %d]", p.limit, MaxSlots)
		case p.hits < -1 || p.hits > 1:
			return p, fmt.Errorf("hits %d out of range [-1, 1]", p.hits)
		case p.hits != 0 && p.lease <= 0:
			return p, errors.New("a lease must be positive")
		}
		return p, nil
	},
	args: func(p params) []any { return []any{p.lease} },
	twin: concurrencyTwin,
}

func concurrencyTwin(nowUs int64, state []int64, p params) (reply, []int64, time.Duration) {
	now := floorDiv(nowUs, 1000)
	// Live leases only; a check keeps the state as it is.
	live := make([]int64, 0, len(state)+2)
	held := -1
	for i := 0; i+1 < len(state); i += 2 {
		if state[i+1] > now {
			if state[i] == p.lease {
				held = len(live)
			}
			live = append(live, state[i], state[i+1])
		}
	}
	var allowed bool
	switch {
	case p.hits > 0:
		allowed = held >= 0 || int64(len(live)/2)+1 <= p.limit
		switch {
		case !allowed:
		case held >= 0:
			live[held+1] = now + p.windowMs
		default:
			live = append(live, p.lease, now+p.windowMs)
		}
	case p.hits < 0:
		allowed = held >= 0
		if allowed {
			live = append(live[:held], live[held+2:]...)
		}
	default:
		allowed = int64(len(live)/2)+1 <= p.limit
	}

	var reset, retry int64
	if len(live) > 0 {
		first, last := live[1], live[1]
		for i := 1; i < len(live); i += 2 {
			first, last = min(first, live[i]), max(last, live[i])
		}
		reset = last - now
		if !allowed && p.hits >= 0 {
			retry = first - now
		}
	}
	r := reply{boolInt(allowed), max(p.limit-int64(len(live)/2), 0), p.limit, reset, retry}
	if p.hits == 0 {
		return r, state, ttlOf(state, now)
	}
	if len(live) == 0 {
		return r, nil, 0
	}
	return r, live, time.Duration(reset) * time.Millisecond
}

// ttlOf is the time until the latest expiry of a twin's state, which a check leaves as it is.
func ttlOf(state []int64, now int64) time.Duration {
	var last int64
	for i := 1; i < len(state); i += 2 {
		last = max(last, state[i])
	}
	if last <= now {
		return 0
	}
	return time.Duration(last-now) * time.Millisecond
}
