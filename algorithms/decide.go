package algorithms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

// Bounds that keep every intermediate value of the scripts below 2^53, where a Lua number (a
// float64) is still an exact integer, so that the scripts and their Go twins agree exactly
// (a quotient a/b of such integers also floors and ceils exactly: a non-integer quotient is at
// least 1/b from an integer, more than half its float64 spacing).
const (
	maxWindow  = 1 << 36 * time.Millisecond // about 2.2 years
	maxCount   = 1 << 40                    // bound on Limit, Burst and |Hits|
	maxProduct = 1 << 52                    // bound on stored counts and (divided by 4) on the GCRA tolerance
)

// replyLen is the number of integers every script returns:
// {allowed (0/1), remaining, limit, reset_after_ms, retry_after_ms}. The priority and
// fair_share scripts append a sixth, shed (0/1).
const replyLen = 5

// reply is a decision as the scripts return it, and as the twins compute it; the last element
// (shed) is 0 for the algorithms that return replyLen integers.
type reply [replyLen + 1]int64

// argCount is the number of ARGV every script takes; an algorithm may append its own (see
// algorithm.args).
const argCount = 5

// params are a Request's numbers as the scripts receive them (ARGV, in this order).
type params struct {
	limit    int64
	windowMs int64
	burst    int64
	hits     int64
	// countRejected is 1 to charge refused hits, else 0 (always 0 in a dry run).
	countRejected int64
	// dryRun decides without changing anything (see Request.DryRun).
	dryRun bool

	// The priority class's share (millionths) and the capacity it gives (filled in by check).
	share, capacity int64
	// The fair_share tenant, its weight and idle timeout.
	member string
	weight int64
	idleMs int64
	// The concurrency lease.
	lease int64
}

// Modes of a decision, ARGV[5] of every script: a script in modeDryRun computes the reply a
// normal call would give (never charging refused hits) and writes nothing.
const (
	modeNormal        = 0
	modeCountRejected = 1
	modeDryRun        = 2
)

// mode is ARGV[5].
func (p *params) mode() int64 {
	if p.dryRun {
		return modeDryRun
	}
	return p.countRejected // modeNormal or modeCountRejected
}

// algorithm is one algorithm: its script and its native twin.
type algorithm struct {
	id     int
	name   Name
	script *storage.Script
	// check rejects parameters outside the range where the arithmetic is exact, and fills
	// in defaults.
	check func(p params) (params, error)
	// replyLen is the length of the script's reply: replyLen + 1 for a script that appends
	// shed; 0 means replyLen.
	replyLen int
	// keys are the suffixes of the keys the script takes after the request's key (KEYS[2],
	// ...); they keep its hash tag.
	keys []string
	// args returns the script's ARGV after the argCount common ones; nil for none.
	args func(p params) []any
	// twin is the script in Go: it decides at nowUs (Unix microseconds) on state (nil when
	// empty) and returns the reply and the next state with its TTL (nil or <= 0 deletes).
	twin func(nowUs int64, state []int64, p params) (r reply, next []int64, ttl time.Duration)
}

// algorithmCount is the number of algorithms; ids index RedisDecider.scripts.
const algorithmCount = 6

// all lists every algorithm.
var all = [algorithmCount]*algorithm{&fixedWindow, &slidingWindow, &tokenBucket, &priority, &fairShare, &concurrency}

func lookup(n Name) (*algorithm, bool) {
	switch n {
	case FixedWindow:
		return &fixedWindow, true
	case SlidingWindow:
		return &slidingWindow, true
	case TokenBucket:
		return &tokenBucket, true
	case Priority:
		return &priority, true
	case FairShare:
		return &fairShare, true
	case Concurrency:
		return &concurrency, true
	}
	return nil, false
}

// Check reports whether r is within the ranges the algorithms decide exactly: a known
// algorithm, a window of 1ms to about 2.2 years, counts of at most 2^40, and the per-algorithm
// bounds on their products (see each algorithm). Deciders return the same error for such a
// request, as a failed decision; callers can check first to refuse an out-of-range limit as
// bad input instead of a storage error.
func Check(r *Request) error {
	_, _, err := prepare(r)
	return err
}

// prepare validates req and returns its algorithm and script parameters.
func prepare(req *Request) (*algorithm, params, error) {
	a, ok := lookup(req.Algorithm)
	if !ok {
		return nil, params{}, fmt.Errorf("unknown algorithm %q", req.Algorithm)
	}
	switch {
	case req.Window < time.Millisecond || req.Window > maxWindow:
		return nil, params{}, fmt.Errorf("%s: window %v out of range [1ms, %v]", a.name, req.Window, maxWindow)
	case req.Limit < 0 || req.Limit > maxCount:
		return nil, params{}, fmt.Errorf("%s: limit %d out of range [0, %d]", a.name, req.Limit, int64(maxCount))
	case req.Burst < 0 || req.Burst > maxCount:
		return nil, params{}, fmt.Errorf("%s: burst %d out of range [0, %d]", a.name, req.Burst, int64(maxCount))
	case req.Hits < -maxCount || req.Hits > maxCount:
		return nil, params{}, fmt.Errorf("%s: hits %d out of range [%d, %d]", a.name, req.Hits, -int64(maxCount), int64(maxCount))
	}
	p := params{
		limit:    req.Limit,
		windowMs: req.Window.Milliseconds(),
		burst:    req.Burst,
		hits:     req.Hits,
		share:    req.Share,
		member:   req.Member,
		weight:   req.Weight,
		idleMs:   req.IdleTimeout.Milliseconds(),
		lease:    req.Lease,
	}
	if req.DryRun {
		p.dryRun = true
	} else if req.CountRejected {
		p.countRejected = 1
	}
	p, err := a.check(p)
	if err != nil {
		return nil, params{}, fmt.Errorf("%s: %w", a.name, err)
	}
	return a, p, nil
}

// result turns a reply into a Result. Hits beyond the capacity the decision used can never
// be admitted: such a refusal says Never, with no retry-after.
func (r *reply) result(hits int64) Result {
	res := Result{
		Allowed:    r[0] == 1,
		Remaining:  r[1],
		Limit:      r[2],
		ResetAfter: time.Duration(r[3]) * time.Millisecond,
		RetryAfter: time.Duration(r[4]) * time.Millisecond,
		Shed:       r[5] == 1 && r[0] == 0,
	}
	if !res.Allowed && hits > res.Limit {
		res.Never = true
		res.RetryAfter = 0
		res.Shed = false
	}
	return res
}

var errMalformed = errors.New("malformed reply")

// decodeReply checks a raw script reply of replyLen integers.
func decodeReply(raw any) (reply, error) { return decodeReplyLen(raw, replyLen) }

// decodeReplyLen checks a raw script reply: exactly n integers, allowed (and shed) 0 or 1, the
// others non-negative.
func decodeReplyLen(raw any, n int) (reply, error) {
	var r reply
	vals, ok := raw.([]any)
	if !ok {
		return r, fmt.Errorf("%w: %T, want an array", errMalformed, raw)
	}
	if len(vals) != n {
		return r, fmt.Errorf("%w: %d elements, want %d", errMalformed, len(vals), n)
	}
	for i, v := range vals {
		n, ok := v.(int64)
		if !ok {
			return r, fmt.Errorf("%w: element %d is %T, want an integer", errMalformed, i, v)
		}
		if n < 0 || ((i == 0 || i == replyLen) && n > 1) {
			return r, fmt.Errorf("%w: element %d is %d", errMalformed, i, n)
		}
		r[i] = n
	}
	return r, nil
}

// RedisDecider decides on Redis: each decision is one EVALSHA of its algorithm's script, and a
// batch is one pipeline (storage.Redis.Run). The clock is the Redis server's (TIME). It is
// safe for concurrent use.
type RedisDecider struct {
	store   *storage.Redis
	scripts [algorithmCount]*storage.Script
}

// NewRedis returns a Decider on r.
func NewRedis(r *storage.Redis) *RedisDecider {
	d := &RedisDecider{store: r}
	for _, a := range all {
		d.scripts[a.id] = a.script
	}
	return d
}

// Decide implements Decider.
func (d *RedisDecider) Decide(ctx context.Context, reqs []Request) ([]Result, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	calls := make([]storage.ScriptCall, len(reqs))
	keys := make([]string, len(reqs))
	args := make([]any, len(reqs)*argCount)
	algs := make([]*algorithm, len(reqs))
	for i := range reqs {
		a, p, err := prepare(&reqs[i])
		if err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		algs[i] = a
		keys[i] = reqs[i].Key
		argv := args[i*argCount : (i+1)*argCount : (i+1)*argCount]
		argv[0], argv[1], argv[2], argv[3], argv[4] = p.limit, p.windowMs, p.burst, p.hits, p.mode()
		k := keys[i : i+1 : i+1]
		for _, suffix := range a.keys {
			k = append(k, reqs[i].Key+suffix)
		}
		if a.args != nil {
			argv = append(argv, a.args(p)...)
		}
		calls[i] = storage.ScriptCall{Script: d.scripts[a.id], Keys: k, Args: argv}
	}
	replies, err := d.store.Run(ctx, calls)
	var partial *PartialError
	if err != nil && !errors.As(err, &partial) {
		return nil, fmt.Errorf("decide: %w", err)
	}
	results := make([]Result, len(reqs))
	for i, raw := range replies {
		if partial != nil && partial.Failed[i] != nil {
			continue
		}
		r, err := decodeReplyLen(raw, max(algs[i].replyLen, replyLen))
		if err != nil {
			return nil, fmt.Errorf("decide request %d (%s): %w", i, reqs[i].Algorithm, err)
		}
		results[i] = r.result(reqs[i].Hits)
	}
	if partial != nil {
		return results, partial
	}
	return results, nil
}

// Ping reports whether Redis answers, for readiness checks.
func (d *RedisDecider) Ping(ctx context.Context) error { return d.store.Ping(ctx) }

// MemoryDecider decides on an in-process storage.Memory with the scripts' Go twins; the clock
// is the store's. It gives the same answers as RedisDecider for the same clock readings. It is
// safe for concurrent use.
type MemoryDecider struct {
	store *storage.Memory
}

// NewMemory returns a Decider on m.
func NewMemory(m *storage.Memory) *MemoryDecider {
	return &MemoryDecider{store: m}
}

// Decide implements Decider. Every request is validated before any is applied; the decisions
// of one batch are not atomic together (neither are a pipeline's).
func (d *MemoryDecider) Decide(ctx context.Context, reqs []Request) ([]Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("decide: %w", err)
	}
	if len(reqs) == 0 {
		return nil, nil
	}
	// Every request is checked before any is applied.
	var algsBuf [8]*algorithm // a request's descriptors usually fit: no allocation
	var psBuf [8]params
	algs, ps := algsBuf[:0], psBuf[:0]
	for i := range reqs {
		a, p, err := prepare(&reqs[i])
		if err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		algs, ps = append(algs, a), append(ps, p)
	}
	results := make([]Result, len(reqs))
	for i := range reqs {
		a, p := algs[i], ps[i]
		var r reply
		if p.dryRun {
			// The twin on a copy of the state; the store keeps the state and its expiry.
			d.store.Peek(reqs[i].Key, func(now time.Time, state []int64) {
				r, _, _ = a.twin(now.UnixMicro(), slices.Clone(state), p)
			})
			results[i] = r.result(p.hits)
			continue
		}
		d.store.Update(reqs[i].Key, func(now time.Time, state []int64) ([]int64, time.Duration) {
			var next []int64
			var ttl time.Duration
			r, next, ttl = a.twin(now.UnixMicro(), state, p)
			return next, ttl
		})
		results[i] = r.result(p.hits)
	}
	return results, nil
}

// Ping always succeeds: the memory store is always ready. It exists for symmetry with
// RedisDecider.Ping.
func (d *MemoryDecider) Ping(context.Context) error { return nil }

// Interface checks.
var (
	_ Decider = (*RedisDecider)(nil)
	_ Decider = (*MemoryDecider)(nil)
)

// stateOf returns a slice of n int64 for the next state, reusing old when it is large enough.
func stateOf(old []int64, n int) []int64 {
	if cap(old) >= n {
		return old[:n]
	}
	return make([]int64, n)
}

// floorDiv and ceilDiv divide non-negative a by positive b.
func floorDiv(a, b int64) int64 { return a / b }
func ceilDiv(a, b int64) int64  { return (a + b - 1) / b }

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
