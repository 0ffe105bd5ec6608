// Package config reads rate-limit descriptor files in the envoyproxy/ratelimit YAML format,
// validates them strictly and compiles them into an immutable lookup tree.
//
// A Set is immutable once built and safe for concurrent use; reloading builds a new Set and
// the caller swaps it atomically.
package config

import (
	"time"
)

// Unit is the time unit of a limit, as in envoyproxy/ratelimit.
type Unit int

// Units, in the order of Envoy's RateLimitUnit enum (UNKNOWN = 0 is not a valid unit).
const (
	UnitUnknown Unit = iota
	UnitSecond
	UnitMinute
	UnitHour
	UnitDay
	UnitMonth
	UnitYear
	UnitWeek
)

// Duration is the length of one unit: a month is 30 days and a year 365 days, as in
// envoyproxy/ratelimit.
func (u Unit) Duration() time.Duration {
	switch u {
	case UnitSecond:
		return time.Second
	case UnitMinute:
		return time.Minute
	case UnitHour:
		return time.Hour
	case UnitDay:
		return 24 * time.Hour
	case UnitWeek:
		return 7 * 24 * time.Hour
	case UnitMonth:
		return 30 * 24 * time.Hour
	case UnitYear:
		return 365 * 24 * time.Hour
	}
	return 0
}

// Algorithm names the algorithm that enforces a limit.
type Algorithm string

// Algorithms.
const (
	FixedWindow   Algorithm = "fixed_window"
	SlidingWindow Algorithm = "sliding_window"
	TokenBucket   Algorithm = "token_bucket"
	Priority      Algorithm = "priority"
	FairShare     Algorithm = "fair_share"
	// Concurrency limits how many leases (taken by the native API's Acquire) are held at once:
	// RequestsPerUnit slots (1 to MaxSlots). Its Window is the longest a lease lives, and its
	// TTL when the caller asks for none; a lease not released frees its slot when that ends.
	// Elsewhere (Envoy's API, the native Check) the rule is a check that takes no slot: admitted
	// while a slot is free.
	Concurrency Algorithm = "concurrency"
)

// MaxSlots is the largest requests_per_unit of a concurrency rule.
const MaxSlots = 100_000

// Shared reports whether the algorithm makes every value of the rule's last descriptor entry
// share one capacity: the value names a priority class or a fair_share tenant, and is left out
// of the counter key.
func (a Algorithm) Shared() bool { return a == Priority || a == FairShare }

// DefaultNearLimitRatio is the share of a limit at and above which an admitted request is
// graded near limit.
const DefaultNearLimitRatio = 0.8

// Limit is one compiled rate_limit. Every field is filled with its default, so callers never
// interpret zero values.
type Limit struct {
	// Name is the rate_limit's name, empty when it has none.
	Name string
	// Path is the descriptor path of the rule for logs, e.g. "shop/client=acme/route".
	Path string
	// Unlimited limits are reported, never counted.
	Unlimited bool
	// RequestsPerUnit is the number of requests allowed per Window.
	RequestsPerUnit uint32
	// Unit is the configured unit; Window is UnitMultiplier of them.
	Unit           Unit
	UnitMultiplier uint32
	Window         time.Duration
	// Algorithm is FixedWindow unless the rule names another.
	Algorithm Algorithm
	// Burst is the token bucket's capacity (RequestsPerUnit unless set); 0 for other algorithms.
	Burst uint32
	// NearLimitRatio is in (0, 1]; DefaultNearLimitRatio unless set.
	NearLimitRatio float64
	// CountRejected asks for envoyproxy/ratelimit's behaviour: refused hits are counted too and
	// this descriptor is not refunded when another descriptor refuses the request.
	CountRejected bool
	// ShadowMode reports refusals as OK while counting as usual.
	ShadowMode bool
	// DetailedMetric is accepted for compatibility.
	DetailedMetric bool
	// Replaces lists the names of limits this one replaces within a request.
	Replaces []string
	// Priority holds the classes of a priority rule; nil for other algorithms.
	Priority *PrioritySettings
	// FairShare holds the settings of a fair_share rule; nil for other algorithms.
	FairShare *FairShareSettings
	// FailureMode says how the rule answers while the store fails; FailError unless set.
	FailureMode FailureMode
}

// FailureMode is how a rule answers when the store cannot decide.
type FailureMode string

// Failure modes.
const (
	// FailError answers the request with an error (gRPC UNAVAILABLE), so the caller's own
	// policy decides (Envoy's failure_mode_deny).
	FailError FailureMode = "error"
	// FailAllow admits the request, flagged degraded.
	FailAllow FailureMode = "allow"
	// FailDeny refuses the request as over the limit, flagged degraded.
	FailDeny FailureMode = "deny"
	// FailLocal decides with an in-process limiter at the rule's rate divided by the number
	// of replicas, flagged degraded.
	FailLocal FailureMode = "local"
)

// ShareUnit is a whole share: shares are counted in millionths.
const ShareUnit = 1_000_000

// Class is one class of a priority rule.
type Class struct {
	Name string
	// Share is the part of the capacity the class may fill, in millionths (1 to ShareUnit).
	Share int64
}

// PrioritySettings are the classes of a priority rule: one capacity of RequestsPerUnit per
// window, which a request of a class may fill up to the class's share.
type PrioritySettings struct {
	// Classes are ordered, most important first; shares never increase down the list.
	Classes []Class
	// Default is the index in Classes of the class of a request whose value names no class.
	Default int
}

// Class returns the class named value, or the default class when value names none (an empty
// value included). It does not allocate.
func (p *PrioritySettings) Class(value string) Class {
	for _, c := range p.Classes {
		if c.Name == value {
			return c
		}
	}
	return p.Classes[p.Default]
}

// MaxWeight is the largest fair_share weight.
const MaxWeight = 1000

// FairShareSettings are the settings of a fair_share rule: a pool of RequestsPerUnit per
// window shared by the tenants active in it.
type FairShareSettings struct {
	// IdleTimeout is how long a tenant stays active after its last request; Window unless set.
	IdleTimeout time.Duration
	// Weights are the tenants' weights (1 to MaxWeight); a tenant not listed weighs 1.
	Weights map[string]int64
}

// Weight returns the weight of tenant.
func (f *FairShareSettings) Weight(tenant string) int64 {
	if w, ok := f.Weights[tenant]; ok {
		return w
	}
	return 1
}

// Entry is one key/value pair of a request descriptor. Envoy's
// *ratelimitv3.RateLimitDescriptor_Entry satisfies it.
type Entry interface {
	GetKey() string
	GetValue() string
}
