package algorithms

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// OverLimitCacheOptions configures an OverLimitCache.
type OverLimitCacheOptions struct {
	// Size bounds the number of keys remembered; when it is reached, the least recently used
	// key is forgotten. Zero or less remembers nothing: every request goes to the wrapped
	// Decider.
	Size int
	// Now is the clock that ages remembered retry-afters; time.Now when nil.
	Now func() time.Time
}

// OverLimitCacheStats are an OverLimitCache's counts since it was made.
type OverLimitCacheStats struct {
	// Hits counts requests answered from the cache, without the store.
	Hits uint64
	// Misses counts cacheable requests (positive hits, not CountRejected) that went to the
	// wrapped Decider.
	Misses uint64
	// Entries is the number of keys remembered now, expired ones not yet forgotten included.
	Entries int
}

// OverLimitCache is a Decider that remembers, in the process, the keys the wrapped Decider
// refused with a retry-after, and answers further requests for them from memory until that
// retry-after has elapsed, so that a flood against one exhausted key stops reaching its store.
//
// A remembered refusal answers a request only when the request is equal to the refused one in
// every field (key, algorithm, Limit, Window, Burst, Hits and the rest: a changed override or a
// reloaded limit goes to the store), Hits is positive, CountRejected is false (counting a
// refused hit needs the store), and the algorithm is fixed_window, sliding_window or
// token_bucket, whose refusals depend on the key's own count only (a refusal by an algorithm
// that shares capacity between classes or tenants can end when others stop, so it is never
// remembered). The answer is the remembered refusal aged by the time elapsed since the refused
// decision was asked for: not allowed, Remaining 0, the same Limit, RetryAfter and ResetAfter
// reduced by the elapsed time (rounded up to the millisecond, like the scripts' answers).
// Everything else (pure checks with zero hits, refunds, CountRejected, unknown or expired keys)
// goes to the wrapped Decider, in one call per Decide that holds all of those requests in their
// order; the results are merged back in the order of the requests. A refund, or an admission,
// on a key forgets its refusal. A refusal that can never be admitted (Never) is not remembered.
//
// The error is on the side of refusal and bounded by the retry-after: a key refunded by another
// replica (or charged less by a cheaper request) is answered "refused" here until the
// remembered retry-after ends, never longer than the store itself would have answered at the
// time of the refusal. The retry-after is aged from a clock reading taken before the store was
// asked, so the cache never outlives the store's own retry-after.
//
// An OverLimitCache is safe for concurrent use. It holds at most Size entries and starts no
// goroutine: expired entries are forgotten when they are looked up or when they become the
// least recently used.
type OverLimitCache struct {
	next Decider
	now  func() time.Time
	size int

	hits, misses atomic.Uint64

	mu      sync.Mutex
	entries map[string]*overLimitEntry
	// lru is the sentinel of a circular list of the entries: lru.next is the most recently
	// used, lru.prev the least.
	lru overLimitEntry
}

type overLimitEntry struct {
	// req is the refused request; only an equal request is answered by the entry.
	req Request
	// at is the clock reading taken before the refusal was asked for.
	at         time.Time
	limit      int64 // Result.Limit
	retryAfter time.Duration
	resetAfter time.Duration
	prev, next *overLimitEntry
}

// NewOverLimitCache returns a cache in front of next, which must not be nil.
func NewOverLimitCache(next Decider, opts OverLimitCacheOptions) *OverLimitCache {
	c := &OverLimitCache{next: next, now: opts.Now, size: opts.Size, entries: make(map[string]*overLimitEntry)}
	if c.now == nil {
		c.now = time.Now
	}
	c.lru.prev, c.lru.next = &c.lru, &c.lru
	return c
}

// Stats returns the cache's counts.
func (c *OverLimitCache) Stats() OverLimitCacheStats {
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	return OverLimitCacheStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Entries: n}
}

// cacheable reports whether a remembered refusal may answer r: a charge whose refused hits are
// not counted, by an algorithm whose refusals depend on the key's own count only.
func cacheable(r *Request) bool {
	if r.Hits <= 0 || r.CountRejected {
		return false
	}
	switch r.Algorithm {
	case FixedWindow, SlidingWindow, TokenBucket:
		return true
	}
	return false
}

// Decide implements Decider.
func (c *OverLimitCache) Decide(ctx context.Context, reqs []Request) ([]Result, error) {
	if c.size <= 0 || len(reqs) == 0 {
		return c.next.Decide(ctx, reqs)
	}
	now := c.now()
	// answered[i] is set for the requests answered from the cache; nil while there are none.
	var results []Result
	var answered []bool
	var hits, misses uint64
	c.mu.Lock()
	for i := range reqs {
		r := &reqs[i]
		switch {
		case cacheable(r):
			if res, ok := c.lookup(r, now); ok {
				if answered == nil {
					results = make([]Result, len(reqs))
					answered = make([]bool, len(reqs))
				}
				results[i], answered[i] = res, true
				hits++
				continue
			}
			misses++
		case r.Hits < 0:
			c.forget(r.Key)
		}
	}
	c.mu.Unlock()
	c.hits.Add(hits)
	c.misses.Add(misses)
	if answered == nil {
		// Nothing came from the cache: the store decides the whole batch as it is.
		out, err := c.next.Decide(ctx, reqs)
		var partial *PartialError
		if err != nil && !errors.As(err, &partial) {
			return nil, err
		}
		if len(out) != len(reqs) {
			return nil, fmt.Errorf("over-limit cache: %d results for %d requests", len(out), len(reqs))
		}
		c.learn(reqs, out, now) // a failed request's zero result is no refusal to remember
		return out, err
	}
	if hits == uint64(len(reqs)) {
		return results, nil
	}
	rest := make([]Request, 0, len(reqs)-int(hits))
	idx := make([]int, 0, cap(rest))
	for i := range reqs {
		if !answered[i] {
			rest = append(rest, reqs[i])
			idx = append(idx, i)
		}
	}
	out, err := c.next.Decide(ctx, rest)
	var partial *PartialError
	if err != nil && !errors.As(err, &partial) {
		return nil, err
	}
	if len(out) != len(rest) {
		return nil, fmt.Errorf("over-limit cache: %d results for %d requests", len(out), len(rest))
	}
	for k, i := range idx {
		results[i] = out[k]
	}
	c.learn(rest, out, now)
	if partial != nil {
		// The failures are the store's, in the numbering of the whole batch.
		failed := make([]error, len(reqs))
		for k, i := range idx {
			failed[i] = partial.Failed[k]
		}
		return results, &PartialError{Failed: failed}
	}
	return results, nil
}

// lookup answers r from a valid remembered refusal. It forgets an expired one. c.mu is held.
func (c *OverLimitCache) lookup(r *Request, now time.Time) (Result, bool) {
	e, ok := c.entries[r.Key]
	if !ok || e.req != *r {
		return Result{}, false
	}
	elapsed := max(now.Sub(e.at), 0)
	if elapsed >= e.retryAfter {
		c.remove(e)
		return Result{}, false
	}
	c.unlink(e)
	c.pushFront(e)
	return Result{
		Allowed:    false,
		Remaining:  0,
		Limit:      e.limit,
		ResetAfter: ceilMillisecond(max(e.resetAfter-elapsed, 0)),
		RetryAfter: ceilMillisecond(e.retryAfter - elapsed),
	}, true
}

// learn remembers the refusals with a retry-after among the store's results (asked for at
// at), and forgets the keys that were refunded or admitted.
func (c *OverLimitCache) learn(reqs []Request, out []Result, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range reqs {
		r, res := &reqs[k], &out[k]
		switch {
		case r.Hits < 0 || (r.Hits > 0 && res.Allowed):
			c.forget(r.Key)
		case cacheable(r) && !res.Allowed && !res.Never && res.RetryAfter > 0:
			c.remember(r, res, at)
		}
	}
}

// remember stores (or replaces) the refusal res of r. c.mu is held.
func (c *OverLimitCache) remember(r *Request, res *Result, at time.Time) {
	e, ok := c.entries[r.Key]
	if ok {
		c.unlink(e)
	} else {
		if len(c.entries) >= c.size {
			c.remove(c.lru.prev)
		}
		e = &overLimitEntry{}
		c.entries[r.Key] = e
	}
	e.req = *r
	e.at = at
	e.limit = res.Limit
	e.retryAfter = res.RetryAfter
	e.resetAfter = res.ResetAfter
	c.pushFront(e)
}

// forget drops key's refusal, if any. c.mu is held.
func (c *OverLimitCache) forget(key string) {
	if e, ok := c.entries[key]; ok {
		c.remove(e)
	}
}

func (c *OverLimitCache) remove(e *overLimitEntry) {
	c.unlink(e)
	delete(c.entries, e.req.Key)
}

func (c *OverLimitCache) unlink(e *overLimitEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *OverLimitCache) pushFront(e *overLimitEntry) {
	e.prev, e.next = &c.lru, c.lru.next
	c.lru.next.prev = e
	c.lru.next = e
}

// ceilMillisecond rounds a non-negative d up to a whole millisecond.
func ceilMillisecond(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

var _ Decider = (*OverLimitCache)(nil)
