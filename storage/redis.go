package storage

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Script is a Lua script with its SHA1 digest computed once. The zero value is not usable; use
// NewScript. A Script is immutable and safe for concurrent use.
type Script struct {
	src string
	sha string
}

// NewScript returns the script src with its digest precomputed.
func NewScript(src string) *Script {
	sum := sha1.Sum([]byte(src))
	return &Script{src: src, sha: hex.EncodeToString(sum[:])}
}

// Source returns the script's text.
func (s *Script) Source() string { return s.src }

// SHA1 returns the hex SHA1 digest EVALSHA names the script by.
func (s *Script) SHA1() string { return s.sha }

// ScriptCall is one script invocation: the script, its KEYS and its ARGV.
type ScriptCall struct {
	Script *Script
	Keys   []string
	Args   []any
}

// Redis runs scripts on a Redis deployment (a single server, a ring of shards, a cluster or a
// sentinel-managed primary: anything behind a redis.UniversalClient). It is safe for
// concurrent use; it does not own the client, so closing the client is the caller's job.
type Redis struct {
	client redis.UniversalClient
}

// NewRedis returns a Redis store over client.
func NewRedis(client redis.UniversalClient) *Redis {
	return &Redis{client: client}
}

// Client returns the underlying client.
func (r *Redis) Client() redis.UniversalClient { return r.client }

// Run sends every call as EVALSHA in one pipeline and returns the raw replies in the order of
// calls. Calls whose script is not in the server's cache (NOSCRIPT: they did not run) are sent
// again as EVAL, which also caches the script, in one more pipeline. Any other per-call error
// fails the whole batch: no reply is returned. The deadline of ctx bounds the round trips when
// the client was built with ContextTimeoutEnabled (see NewClient).
func (r *Redis) Run(ctx context.Context, calls []ScriptCall) ([]any, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range calls {
			c := &calls[i]
			cmds[i] = p.EvalSha(ctx, c.Script.sha, c.Keys, c.Args...)
		}
		return nil
	})
	replies := make([]any, len(calls))
	var missing []int
	for i, cmd := range cmds {
		switch err := cmd.Err(); {
		case err == nil:
			replies[i] = cmd.Val()
		case isNoScript(err):
			missing = append(missing, i)
		default:
			return nil, fmt.Errorf("run script %s: %w", calls[i].Script.sha[:8], err)
		}
	}
	if len(missing) == 0 {
		if err != nil {
			// Every command succeeded, yet the pipeline failed: trust nothing.
			return nil, fmt.Errorf("run scripts: %w", err)
		}
		return replies, nil
	}
	retry := make([]*redis.Cmd, len(missing))
	_, err = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for j, i := range missing {
			c := &calls[i]
			retry[j] = p.Eval(ctx, c.Script.src, c.Keys, c.Args...)
		}
		return nil
	})
	for j, i := range missing {
		if err := retry[j].Err(); err != nil {
			return nil, fmt.Errorf("load script %s: %w", calls[i].Script.sha[:8], err)
		}
		replies[i] = retry[j].Val()
	}
	if err != nil {
		return nil, fmt.Errorf("load scripts: %w", err)
	}
	return replies, nil
}

// Ping checks that the deployment answers: every shard a ring counts as up (and at least one
// is), every primary of a cluster with the cluster's state ok, or the single server or
// sentinel-managed primary. The error names the server that failed.
func (r *Redis) Ping(ctx context.Context) error {
	switch c := r.client.(type) {
	case *redis.Ring:
		if c.Len() == 0 {
			return errors.New("ping redis: no shard of the ring is up")
		}
		return c.ForEachShard(ctx, func(ctx context.Context, s *redis.Client) error {
			if err := s.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("ping redis shard %s: %w", s.Options().Addr, err)
			}
			return nil
		})
	case *redis.ClusterClient:
		masters := 0
		var mu sync.Mutex
		err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			info, err := n.ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("ping redis cluster node %s: %w", n.Options().Addr, err)
			}
			if !strings.Contains(info, "cluster_state:ok") {
				return fmt.Errorf("redis cluster node %s: cluster_state is not ok", n.Options().Addr)
			}
			mu.Lock()
			masters++
			mu.Unlock()
			return nil
		})
		if err != nil {
			return err
		}
		if masters == 0 {
			return errors.New("ping redis cluster: no primary known")
		}
		return nil
	}
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return nil
}

func isNoScript(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT")
}
