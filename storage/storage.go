// Package storage holds the stores decisions run on: Redis (scripts sent by EVALSHA with a
// NOSCRIPT fallback, one pipeline per batch) and an in-process memory store with expiry.
// It knows nothing of rate limiting.
package storage
