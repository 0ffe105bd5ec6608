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
// again as EVAL, which also caches the script, in one more pipeline. When every call fails, the
// error is the first call's and no reply is returned; when only some fail (one shard of
// several), the replies of the others are returned with a *PartialError saying which failed, so
// the caller can honour what did run. The deadline of ctx bounds the round trips when
// the client was built with ContextTimeoutEnabled (see NewClient).
func (r *Redis) Run(ctx context.Context, calls []ScriptCall) ([]any, error) {
	if len(calls) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, perr := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range calls {
			c := &calls[i]
			cmds[i] = p.EvalSha(ctx, c.Script.sha, c.Keys, c.Args...)
		}
		return nil
	})
	replies := make([]any, len(calls))
	failed := make([]error, len(calls))
	nfailed := 0
	var missing []int
	for i, cmd := range cmds {
		switch err := cmd.Err(); {
		case err == nil:
			replies[i] = cmd.Val()
		case isNoScript(err):
			missing = append(missing, i)
		default:
			failed[i] = fmt.Errorf("run script %s: %w", calls[i].Script.sha[:8], err)
			nfailed++
		}
	}
	if nfailed == 0 && len(missing) == 0 && perr != nil {
		// Every command succeeded, yet the pipeline failed: trust nothing.
		return nil, fmt.Errorf("run scripts: %w", perr)
	}
	if len(missing) > 0 {
		retry := make([]*redis.Cmd, len(missing))
		_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, i := range missing {
				c := &calls[i]
				retry[j] = p.Eval(ctx, c.Script.src, c.Keys, c.Args...)
			}
			return nil
		})
		for j, i := range missing {
			if err := retry[j].Err(); err != nil {
				failed[i] = fmt.Errorf("load script %s: %w", calls[i].Script.sha[:8], err)
				nfailed++
				continue
			}
			replies[i] = retry[j].Val()
		}
	}
	switch {
	case nfailed == len(calls):
		return nil, failed[0]
	case nfailed > 0:
		return replies, &PartialError{Failed: failed}
	}
	return replies, nil
}

// PartialError reports a batch in which some calls failed (a shard down, a timeout on one
// shard) while the others ran: their replies are valid, and those calls took effect.
type PartialError struct {
	// Failed holds each failed call's error, nil for the calls that ran.
	Failed []error
}

func (e *PartialError) Error() string {
	n, first := 0, error(nil)
	for _, err := range e.Failed {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	return fmt.Sprintf("%d of %d calls failed: %v", n, len(e.Failed), first)
}

// Unwrap returns the failed calls' errors, so that errors.Is sees through a PartialError.
func (e *PartialError) Unwrap() []error {
	var errs []error
	for _, err := range e.Failed {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
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
