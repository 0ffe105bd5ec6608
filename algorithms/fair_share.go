package algorithms

import (
	_ "embed"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/ratelimitd/ratelimitd/storage"
)

//go:embed fair_share.lua
var fairShareLua string

// MaxWeight is the largest fair_share weight.
const MaxWeight = 1000

// fairShare shares a pool of Limit hits per epoch-aligned window of Window between the
// tenants active in it, max-min fairly and work-conserving: a tenant alone may use the whole
// pool, and a tenant that asks no more than its fair share is not refused because of another
// tenant's demand.
//
// Model: a tenant (Request.Member) is active from its first request until IdleTimeout has
// passed without one (every decision counts, checks and refunds included). With S the sum of
// the active tenants' weights, tenant j's fair share is fair_j = floor(Limit × w_j / S), and
// reserved = Σ_j max(0, fair_j − used_j) over the active tenants is what they may still claim of
// their shares in the window. With total the hits used in the window by every tenant, a request
// of tenant i for h > 0 hits is admitted when
//
//	total + h <= Limit, and
//	used_i + h <= fair_i (within its share) or total + h + reserved_others <= Limit,
//
// where reserved_others = reserved − max(0, fair_i − used_i): beyond its share a tenant takes
// only capacity no under-share tenant can claim. The pool total never exceeds Limit (unless
// CountRejected charges refused hits). A refusal while total + h <= Limit is Shed (the tenant is
// above its share and the rest is kept for others); a refusal when the pool is spent is over
// the limit; h > Limit can never pass (Never). RetryAfter and ResetAfter are the end of the
// window. Remaining is the most the tenant could be admitted now. Hits 0 checks; negative hits
// refund what the tenant used in the window, never more.
//
// Guarantee: while the active set has not changed since the window began, total + reserved
// <= Limit holds after every decision (an admission within the share moves hits from reserved
// to total; one beyond it needs total + h + reserved_others <= Limit), so a request within its
// share always fits. A tenant that becomes active mid-window may find the pool already spent
// by tenants that were alone before it: it is refused (over the limit) until the window ends,
// and has its share from the next window on. Each tenant's usage is kept for the window even
// if it goes idle, so leaving and coming back never yields a second share.
//
// Cost on Redis, with N active tenants: O(log N) per decision (sorted-set updates and a few
// hash fields; reserved is maintained incrementally). A decision that changes the active set
// (a join, idle tenants leaving), a weight or the pool changes every fair share; it recomputes
// reserved = Σ_w count_w × floor(Limit × w / S) − used_active + excess without walking the
// active tenants, in O(D + log N + M + L log N): D distinct weights among the active tenants
// (count_w is kept per weight), used_active the hits used by the active tenants (kept
// incrementally), excess = Σ max(0, used_j − fair_j), found among the M tenants above their
// share, and L tenants leaving (each left once, so amortised over the joins). Tenant j is above
// its share exactly when used_j / w_j > Limit / S, so the active tenants with usage sit in a
// sorted set scored used_j / w_j and the M above their share are one range of it (the doubles
// compare exactly: two distinct ratios of such integers differ by at least 1/(w_j × Limit) of
// their size, 2^-50 at most, more than a double's rounding). M is at most the tenants with
// usage, and at most the hits used in the window (each of them used one or more). Usage is
// deleted once per window. Measured by TestFairShareScriptCost (real redis-server 7.0, µs of
// script per call, three runs on a shared, noisy machine where sliding_window took 37-51µs;
// 10 / 100 / 1000 active tenants, each with usage): 64-87 / 99-112 / 97-148 for a decision of
// an active tenant, 107-159 / 110-146 / 85-214 for a join, against 121-222 / 277-292 /
// 1601-1850 for a join that walked every active tenant. The twin scans its state, O(N) per
// decision, in memory.
//
// State on Redis, all under the request's key K and its hash tag: K (a hash of the window's
// totals and the active usage), K:a (the active tenants' last-seen times, a sorted set), K:w
// (their weights), K:u (usage in the window), K:z (used / weight of the active tenants with
// usage, a sorted set) and K:c (the number of active tenants per weight). A K without the
// layout's version field (the former layout, K to K:u) is rebuilt from K:w and K:u on its next
// decision, once, in O(N). Every key's TTL is max(time to the window's end, IdleTimeout),
// reset on every decision, after which the state is equivalent to none: expiry only frees
// memory. The twin keeps the same under the one key (see fairShareTwin).
var fairShare = algorithm{
	id:       4,
	name:     FairShare,
	script:   storage.NewScript(fairShareLua),
	replyLen: 6,
	keys:     []string{":a", ":w", ":u", ":z", ":c"},
	check: func(p params) (params, error) {
		switch {
		case p.weight < 0 || p.weight > MaxWeight:
			return p, fmt.Errorf("weight %d out of range [0, %d]", p.weight, MaxWeight)
		case p.weight == 0:
			p.weight = 1
		}
		switch {
		case p.idleMs < 0 || p.idleMs > maxWindow.Milliseconds():
			return p, fmt.Errorf("idle timeout %dms out of range [0, %v]", p.idleMs, maxWindow)
		case p.idleMs == 0:
			p.idleMs = p.windowMs
		}
		return p, nil
	},
	args: func(p params) []any { return []any{p.member, p.weight, p.idleMs} },
	twin: fairShareTwin,
}

// The twin's state: a header, then one record per tenant that is active or has used hits in
// the window.
const (
	fsWindow     = iota // the window index
	fsTotal             // hits used in the window
	fsSumWeights        // the sum of the active tenants' weights
	fsSumFair           // the sum of their fair shares
	fsReserved          // what they may still claim of them
	fsPool              // the pool the shares were computed for
	fsHeader            // the header's length
)

// A record: {last seen ms, weight (0: no longer active), hits used in the window, name length
// in bytes, the name packed 8 bytes to a word}.
const (
	fsSeen = iota
	fsWeight
	fsUsed
	fsNameLen
	fsName
)

// fsRecordLen is the length of a record whose name is n bytes long.
func fsRecordLen(n int64) int { return fsName + int((n+7)/8) }

// fsPutName packs name into words.
func fsPutName(words []int64, name string) {
	var b [8]byte
	for i := range words {
		clear(b[:])
		copy(b[:], name[min(8*i, len(name)):min(8*i+8, len(name))])
		words[i] = int64(binary.BigEndian.Uint64(b[:]))
	}
}

// fsIsName reports whether the record rec names name.
func fsIsName(rec []int64, name string) bool {
	if rec[fsNameLen] != int64(len(name)) {
		return false
	}
	var b [8]byte
	for i, w := range rec[fsName:] {
		binary.BigEndian.PutUint64(b[:], uint64(w))
		part := name[8*i : min(8*i+8, len(name))]
		if string(b[:len(part)]) != part {
			return false
		}
	}
	return true
}

func fairShareTwin(nowUs int64, state []int64, p params) (reply, []int64, time.Duration) {
	now := floorDiv(nowUs, 1000)
	pool := p.limit
	idx := floorDiv(now, p.windowMs)
	reset := p.windowMs - (now - idx*p.windowMs)

	var total, sumw, sumfair, reserved int64
	rolled, recompute := true, true
	if len(state) >= fsHeader {
		rolled = state[fsWindow] != idx
		recompute = state[fsPool] != pool
		sumw, sumfair = state[fsSumWeights], state[fsSumFair]
		if !rolled {
			total, reserved = state[fsTotal], state[fsReserved]
		}
	} else {
		state = make([]int64, fsHeader, fsHeader+fsRecordLen(int64(len(p.member))))
	}

	// One pass: forget usage of a past window, evict idle tenants, drop records that hold
	// nothing, find the tenant's record.
	cutoff := now - p.idleMs
	at := -1
	write := fsHeader
	for read := fsHeader; read < len(state); {
		n := fsRecordLen(state[read+fsNameLen])
		rec := state[read : read+n]
		read += n
		if rolled {
			rec[fsUsed] = 0
		}
		if rec[fsWeight] > 0 && rec[fsSeen] <= cutoff {
			rec[fsWeight] = 0
			recompute = true
		}
		mine := at < 0 && fsIsName(rec, p.member)
		if rec[fsWeight] == 0 && rec[fsUsed] == 0 && !mine {
			continue
		}
		if mine {
			at = write
		}
		write += copy(state[write:], rec)
	}
	state = state[:write]
	if at < 0 {
		at = len(state)
		n := fsRecordLen(int64(len(p.member)))
		state = append(state, make([]int64, n)...)
		state[at+fsNameLen] = int64(len(p.member))
		fsPutName(state[at+fsName:at+n], p.member)
	}
	rec := state[at:]
	if rec[fsWeight] != p.weight {
		rec[fsWeight] = p.weight
		recompute = true
	}
	rec[fsSeen] = now

	if recompute {
		sumw, sumfair, reserved = 0, 0, 0
		for i := fsHeader; i < len(state); i += fsRecordLen(state[i+fsNameLen]) {
			sumw += state[i+fsWeight]
		}
		for i := fsHeader; i < len(state); i += fsRecordLen(state[i+fsNameLen]) {
			if w := state[i+fsWeight]; w > 0 {
				fj := pool * w / sumw
				sumfair += fj
				reserved += max(fj-state[i+fsUsed], 0)
			}
		}
	} else if rolled {
		reserved = sumfair
	}

	used := rec[fsUsed]
	fair := pool * p.weight / sumw
	others := reserved - max(fair-used, 0)
	h := p.hits
	if h < 0 {
		take := min(used, -h)
		used -= take
		total -= take
		h = 0
	}
	allowed := total+h <= pool && (used+h <= fair || total+h+others <= pool)
	shed := !allowed && p.hits <= pool && total+h <= pool
	if p.hits > 0 && (allowed || p.countRejected == 1) {
		add := min(p.hits, maxProduct-total)
		used += add
		total += add
	}
	rec[fsUsed] = used
	reserved = others + max(fair-used, 0)

	var retry int64
	if !allowed && p.hits <= pool {
		retry = reset
	}
	remaining := max(min(max(fair-used, pool-total-others), pool-total), 0)
	state[fsWindow], state[fsTotal], state[fsSumWeights] = idx, total, sumw
	state[fsSumFair], state[fsReserved], state[fsPool] = sumfair, reserved, pool
	r := reply{boolInt(allowed), remaining, pool, reset, retry, boolInt(shed)}
	return r, state, time.Duration(max(reset, p.idleMs)) * time.Millisecond
}
