// Package algorithms decides rate-limit requests. Each algorithm is a Redis Lua script
// (embedded beside the Go that calls and decodes it) and a native Go twin of that script that
// runs on the in-memory store; both give the same answers for the same clock.
//
// Every decision reads the clock of the store that owns the key (Redis TIME, or the memory
// store's clock), never the caller's.
package algorithms

import (
	"context"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

// Name names an algorithm; the values match config.Algorithm.
type Name string

// Algorithms.
const (
	FixedWindow   Name = "fixed_window"
	SlidingWindow Name = "sliding_window"
	TokenBucket   Name = "token_bucket"
	Priority      Name = "priority"
	FairShare     Name = "fair_share"
	Concurrency   Name = "concurrency"
)

// Request is one decision for one key.
type Request struct {
	Algorithm Name
	// Key is the full storage key; every key of one decision shares its hash tag.
	Key string
	// Limit is the number of requests allowed per Window (token bucket: the refill rate).
	Limit int64
	// Window is the length of one window (token bucket: the time to refill Limit tokens).
	Window time.Duration
	// Burst is the token bucket's capacity; ignored by the other algorithms.
	Burst int64
	// Hits is the cost: 0 checks without charging; a negative cost refunds (never below empty).
	Hits int64
	// CountRejected charges refused hits too (envoyproxy/ratelimit's behaviour).
	CountRejected bool
	// DryRun decides as if the hits were charged, and changes nothing: the reply is the one the
	// same request without DryRun would get, refused hits never charged (CountRejected is
	// ignored), and no state, expiry or fair_share membership changes. Scripts receive it as
	// mode 2 in ARGV[5]; the memory store runs the twin on a copy (storage.Memory.Peek).
	DryRun bool

	// Share is, for priority, the part of Limit the request's class may fill, in millionths
	// (0 to ShareUnit; 0 means ShareUnit, the whole capacity). The key is the same for every
	// class of a rule. Other algorithms ignore it.
	Share int64
	// Member is, for fair_share, the tenant (any string); other algorithms ignore it.
	Member string
	// Weight is, for fair_share, the tenant's weight (0 to MaxWeight; 0 means 1).
	Weight int64
	// IdleTimeout is, for fair_share, how long a tenant stays active after its last request;
	// 0 means Window.
	IdleTimeout time.Duration
	// Lease is, for concurrency, the lease (positive) that Hits 1 takes a slot for (for Window,
	// the lease's TTL) and Hits -1 gives back; Hits 0 ignores it. Other algorithms ignore it.
	Lease int64
}

// Result is the answer for one Request.
type Result struct {
	// Allowed reports whether the hits were admitted (and charged).
	Allowed bool
	// Remaining is what is left after this decision, never negative.
	Remaining int64
	// Limit echoes the capacity the decision used (Burst for the token bucket).
	Limit int64
	// ResetAfter is how long until the key is back to its full capacity (fixed window: the
	// end of the current window, W - now mod W).
	ResetAfter time.Duration
	// RetryAfter is how long until the same hits would be admitted; zero when allowed, and
	// zero when they can never be admitted (see Never).
	RetryAfter time.Duration
	// Never reports that the hits exceed the capacity and can never be admitted.
	Never bool
	// Shed reports, for priority and fair_share, a refusal while capacity remains: kept for
	// higher classes, or for tenants below their fair share. Never set when Allowed or Never.
	Shed bool
}

// Decider runs a batch of decisions. Results are in the order of the requests. An error means
// no result is trustworthy (storage unreachable, malformed reply, deadline exceeded), except a
// *PartialError: then the results of the requests it does not list as failed are valid, and
// those decisions took effect.
type Decider interface {
	Decide(ctx context.Context, reqs []Request) ([]Result, error)
}

// PartialError reports a batch in which some decisions failed (one shard of several down)
// while the others were made; Failed[i] is request i's error, nil when its result is valid.
type PartialError = storage.PartialError
