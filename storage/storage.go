// Package storage holds the stores decisions run on: Redis (scripts sent by EVALSHA with a
// NOSCRIPT fallback, one pipeline per batch, which go-redis splits into one pipeline per shard
// run in parallel) over any topology Open builds (a single server, a ring of shards, a Redis
// Cluster or a Sentinel-managed primary), and an in-process memory store with expiry.
// It knows nothing of rate limiting.
package storage
