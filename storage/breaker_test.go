package storage

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/test/redisserver"
	"github.com/ratelimitd/ratelimitd/test/testclock"
)

var errDown = errors.New("dial tcp: connection refused")

// TestBreakerSteps drives one server's breaker through a table of timed calls.
func TestBreakerSteps(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	b := NewBreaker(BreakerOptions{Failures: 3, MinSkip: 100 * time.Millisecond, MaxSkip: 300 * time.Millisecond, Now: clock.Now})
	scriptErr := fmt.Errorf("run script: %w", scriptError("ERR user_script:1: boom"))
	steps := []struct {
		name    string
		advance time.Duration
		err     error // outcome of the call when it goes through
		through bool  // want the call to reach the server
	}{
		{"failure 1", 0, errDown, true},
		{"an error reply is an answer: resets the count", 0, scriptErr, true},
		{"failure 1 again", 0, errDown, true},
		{"failure 2", 0, context.DeadlineExceeded, true},
		{"a cancelled call counts neither way", 0, context.Canceled, true},
		{"failure 3 opens for 100ms", 0, errDown, true},
		{"skipped", 0, nil, false},
		{"still skipped at 99ms", 99 * time.Millisecond, nil, false},
		{"probe at 100ms fails: 200ms", time.Millisecond, errDown, true},
		{"skipped after the failed probe", 199 * time.Millisecond, nil, false},
		{"probe fails: 300ms (the cap, not 400ms)", time.Millisecond, errDown, true},
		{"skipped", 299 * time.Millisecond, nil, false},
		{"probe succeeds: closed", time.Millisecond, nil, true},
		{"closed: goes through", 0, errDown, true},
		{"one failure does not open", 0, nil, true},
	}
	addr := "10.0.0.1:6379"
	for _, s := range steps {
		clock.Add(s.advance)
		probe, err := b.allow(addr)
		if got := err == nil; got != s.through {
			t.Fatalf("%s: through %v (err %v), want %v", s.name, got, err, s.through)
		}
		if err != nil {
			if !errors.Is(err, ErrShardSkipped) {
				t.Fatalf("%s: error %v, want ErrShardSkipped", s.name, err)
			}
			continue
		}
		b.done(addr, probe, s.err)
	}
	want := BreakerStats{Calls: 11, Skipped: 4, Opened: 3}
	if got := b.Stats(addr); got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

// TestBreakerOneProbe: while the probe is in flight, the other calls still fail fast.
func TestBreakerOneProbe(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	b := NewBreaker(BreakerOptions{Failures: 1, Now: clock.Now})
	probe, _ := b.allow("a")
	b.done("a", probe, errDown)
	clock.Add(DefaultBreakerMinSkip)
	probe, err := b.allow("a")
	if err != nil || !probe {
		t.Fatalf("first call after the interval: probe %v, err %v; want the probe", probe, err)
	}
	if _, err := b.allow("a"); !errors.Is(err, ErrShardSkipped) {
		t.Errorf("second call while probing: %v, want ErrShardSkipped", err)
	}
	if _, err := b.allow("b"); err != nil {
		t.Errorf("another server: %v, want its own closed breaker", err)
	}
	b.done("a", probe, nil)
	if _, err := b.allow("a"); err != nil {
		t.Errorf("after a good probe: %v, want closed", err)
	}
}

type scriptError string

func (e scriptError) Error() string { return string(e) }
func (scriptError) RedisError()     {}

// TestBreakerRealServer stops a real redis-server under a client: after Failures calls reach
// the dead address, the rest fail fast without reaching it; once it is back and the interval
// ends, one probe closes the breaker. The breaker's clock is frozen, so the counts are exact.
func TestBreakerRealServer(t *testing.T) {
	rs := redisserver.Start(t)
	clock := testclock.New(time.Unix(1000, 0))
	b := NewBreaker(BreakerOptions{Failures: 3, Now: clock.Now})
	c, err := Open(Options{URL: "redis://" + rs.Addr, Breaker: b})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	before := b.Stats(rs.Addr)
	rs.Stop()
	const n = 50
	skipped := 0
	for range n {
		err := c.Ping(ctx).Err()
		switch {
		case errors.Is(err, ErrShardSkipped):
			skipped++
		case err == nil:
			t.Fatal("ping of a stopped server succeeded")
		}
	}
	got := b.Stats(rs.Addr)
	if calls := got.Calls - before.Calls; calls != 3 || skipped != n-3 || got.Opened != 1 {
		t.Errorf("%d pings with the server down: %d reached it, %d failed fast, opened %d times; want 3, %d, 1", n, calls, skipped, got.Opened, n-3)
	}

	rs.Restart()
	if err := c.Ping(ctx).Err(); !errors.Is(err, ErrShardSkipped) {
		t.Errorf("ping within the skip interval: %v, want ErrShardSkipped", err)
	}
	clock.Add(DefaultBreakerMinSkip)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("probe after the interval, server back: %v", err)
	}
	for i := range 10 {
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatalf("ping %d after the breaker closed: %v", i, err)
		}
	}
	if b.Open() != 0 {
		t.Errorf("%d breakers open, want none", b.Open())
	}
}

// TestBreakerRing: a ring's dead shard is skipped after Failures calls (its heartbeats
// included) while the live shard is untouched.
func TestBreakerRing(t *testing.T) {
	servers := redisserver.StartN(t, 2)
	clock := testclock.New(time.Unix(1000, 0))
	b := NewBreaker(BreakerOptions{Failures: 3, Now: clock.Now})
	c, err := Open(Options{Shards: redisserver.Addrs(servers), Breaker: b, HeartbeatFrequency: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ring := c.(*redis.Ring)
	ctx := context.Background()
	// Keys owned by each shard.
	keys := map[string]string{}
	for i := 0; len(keys) < 2; i++ {
		k := fmt.Sprintf("k%d", i)
		cl, err := ring.GetShardClientForKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := keys[cl.Options().Addr]; !ok {
			keys[cl.Options().Addr] = k
		}
	}
	dead, live := servers[1].Addr, servers[0].Addr
	servers[1].Stop()
	before := b.Stats(dead)
	for range 20 {
		_ = c.Get(ctx, keys[dead]).Err()
		if err := c.Get(ctx, keys[live]).Err(); err != nil && !errors.Is(err, redis.Nil) {
			t.Fatalf("get on the live shard: %v", err)
		}
	}
	got := b.Stats(dead)
	if calls, skipped := got.Calls-before.Calls, got.Skipped-before.Skipped; calls != 3 || skipped != 17 {
		t.Errorf("20 gets on the dead shard: %d reached it, %d failed fast; want 3 and 17", calls, skipped)
	}
	if s := b.Stats(live); s.Skipped != 0 || s.Opened != 0 {
		t.Errorf("live shard: %+v, want nothing skipped", s)
	}
}
