package storage

import (
	"sync"
	"time"
)

// MemoryOptions configures a Memory store. The zero value is ready to use.
type MemoryOptions struct {
	// Now is the store's clock; time.Now when nil. Every Update reads it once, under the key's
	// lock, so a key's updates see non-decreasing readings as long as Now does not go back.
	Now func() time.Time
}

const (
	memoryShards = 64
	// sweepSample is how many entries an insert examines for expiry; sweepRounds bounds how
	// many samples one insert takes while samples keep finding expired entries.
	sweepSample = 8
	sweepRounds = 4
)

// Memory is an in-process store of small int64 vectors, each with an expiry time. It is safe
// for concurrent use: keys are spread over 64 shards, each with its own lock.
//
// Expired entries are reclaimed without a background goroutine: every insert of a new key
// examines a few entries of its shard and deletes the expired ones (Redis's active expiry,
// amortised over writes), so a shard holds at most a small multiple of its live entries.
// Reads never return an expired entry.
type Memory struct {
	now    func() time.Time
	shards [memoryShards]memoryShard
}

type memoryShard struct {
	mu      sync.Mutex
	entries map[string]memoryEntry
	_       [48]byte // keep shards on separate cache lines
}

type memoryEntry struct {
	state   []int64
	expires int64 // Unix nanoseconds
}

// NewMemory returns an empty store.
func NewMemory(opts MemoryOptions) *Memory {
	m := &Memory{now: opts.Now}
	if m.now == nil {
		m.now = time.Now
	}
	for i := range m.shards {
		m.shards[i].entries = make(map[string]memoryEntry)
	}
	return m
}

// Update atomically reads, transforms and writes the state of key. fn receives the store's
// clock reading and the current state, nil when the key is absent or expired; it returns the
// next state and how long it lives. A nil next or a ttl <= 0 deletes the key.
//
// fn runs with the shard's lock held: it must be short and must not call the store. It may
// modify state in place and return it (the store keeps no other reference to it), which saves
// an allocation on the hot path.
func (m *Memory) Update(key string, fn func(now time.Time, state []int64) (next []int64, ttl time.Duration)) {
	s := &m.shards[shardOf(key)]
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	nowNs := now.UnixNano()
	e, ok := s.entries[key]
	if ok && e.expires <= nowNs {
		ok = false
		delete(s.entries, key)
	}
	var state []int64
	if ok {
		state = e.state
	}
	next, ttl := fn(now, state)
	if next == nil || ttl <= 0 {
		if ok {
			delete(s.entries, key)
		}
		return
	}
	if !ok {
		s.sweep(nowNs)
	}
	s.entries[key] = memoryEntry{state: next, expires: nowNs + int64(ttl)}
}

// Peek calls fn with the store's clock reading and the current state of key, nil when the key
// is absent or expired, and changes nothing: the state and its expiry stay as they are. fn
// runs with the shard's lock held, like Update's; it must not modify state or keep it after it
// returns (copy it to work on it).
func (m *Memory) Peek(key string, fn func(now time.Time, state []int64)) {
	s := &m.shards[shardOf(key)]
	s.mu.Lock()
	defer s.mu.Unlock()
	now := m.now()
	var state []int64
	if e, ok := s.entries[key]; ok && e.expires > now.UnixNano() {
		state = e.state
	}
	fn(now, state)
}

// sweep deletes the expired entries among a few it examines. Map iteration starts at a random
// place, so the examined entries are a fresh sample each time.
func (s *memoryShard) sweep(nowNs int64) {
	for range sweepRounds {
		seen, expired := 0, 0
		for k, e := range s.entries {
			if e.expires <= nowNs {
				delete(s.entries, k)
				expired++
			}
			if seen++; seen == sweepSample {
				break
			}
		}
		// Like Redis: keep sampling while more than a quarter of the sample had expired.
		if expired*4 <= sweepSample {
			return
		}
	}
}

// Len returns the number of entries held, expired ones not yet reclaimed included.
func (m *Memory) Len() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}

// shardOf hashes key with 32-bit FNV-1a.
func shardOf(key string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return h % memoryShards
}
