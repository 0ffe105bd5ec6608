package algorithms

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// epoch is the tables' time zero: a multiple of one day, so every window the tables use is
// aligned to it.
var epoch = time.Unix(1_700_006_400, 0)

// clockStmt is the first statement of every script; the real-Redis backend replaces it.
const clockStmt = "local t = redis.call('TIME')"

// backend decides one request at a given time.
type backend interface {
	decide(t *testing.T, at time.Time, req Request) Result
}

// backendMaker builds a fresh backend, with no state, for one test.
type backendMaker struct {
	name string
	make func(t *testing.T) backend
}

func backends() []backendMaker {
	return []backendMaker{
		{"miniredis", newMiniBackend},
		{"redis-server", newRealBackend},
		{"memory", newMemoryBackend},
	}
}

// miniBackend runs the scripts on miniredis, whose TIME honours SetTime.
type miniBackend struct {
	mr *miniredis.Miniredis
	d  *RedisDecider
}

func newMiniBackend(t *testing.T) backend {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return &miniBackend{mr: mr, d: NewRedis(storage.NewRedis(c))}
}

func (b *miniBackend) decide(t *testing.T, at time.Time, req Request) Result {
	t.Helper()
	b.mr.SetTime(at)
	if req.DryRun {
		return decideOne(t, readOnlyDecider(t, b.d, req.Algorithm), req)
	}
	return decideOne(t, b.d, req)
}

// readOnlyCommands are the commands a dry run may call.
var readOnlyCommands = []string{"TIME", "GET", "HGET", "HMGET", "HGETALL", "HLEN", "EXISTS", "PTTL",
	"ZSCORE", "ZCARD", "ZCOUNT", "ZRANGE", "ZRANGEBYSCORE", "ZREVRANGEBYSCORE"}

// readOnlyDecider returns a copy of d whose script for algorithm n fails on any command that
// is not in readOnlyCommands: a dry run through it that succeeds wrote nothing.
func readOnlyDecider(t *testing.T, d *RedisDecider, n Name) *RedisDecider {
	t.Helper()
	a, ok := lookup(n)
	if !ok {
		t.Fatalf("unknown algorithm %q", n)
	}
	guard := "local ro = {" + strings.Join(readOnlyCommands, " = true, ") + " = true}\n" +
		"local function roCall(cmd, ...)\n" +
		"  if not ro[string.upper(cmd)] then error('a dry run called ' .. cmd) end\n" +
		"  return redis.call(cmd, ...)\n" +
		"end\n"
	ro := *d
	ro.scripts[a.id] = storage.NewScript(guard + strings.ReplaceAll(d.scripts[a.id].Source(), "redis.call(", "roCall("))
	return &ro
}

// realBackend runs the scripts on a real redis-server. Its clock cannot be set, so each
// decision runs a copy of the script whose clock statement is replaced by the step's time.
type realBackend struct {
	store *storage.Redis
}

func newRealBackend(t *testing.T) backend {
	srv := redisserver.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return &realBackend{store: storage.NewRedis(c)}
}

func (b *realBackend) decide(t *testing.T, at time.Time, req Request) Result {
	t.Helper()
	d := clockedDecider(t, b.store, req.Algorithm, at)
	if req.DryRun {
		d = readOnlyDecider(t, d, req.Algorithm)
	}
	return decideOne(t, d, req)
}

// clockedDecider returns a RedisDecider whose script for algorithm n reads the clock at.
func clockedDecider(t *testing.T, store *storage.Redis, n Name, at time.Time) *RedisDecider {
	t.Helper()
	a, ok := lookup(n)
	if !ok {
		t.Fatalf("unknown algorithm %q", n)
	}
	src := a.script.Source()
	if !strings.HasPrefix(src, clockStmt+"\n") || strings.Count(src, clockStmt) != 1 {
		t.Fatalf("%s: the script must start with %q, exactly once", n, clockStmt)
	}
	clock := fmt.Sprintf(`local t = {"%d","%d"}`, at.Unix(), at.Nanosecond()/1000)
	src = strings.Replace(src, clockStmt, clock, 1)
	// redis-server's TTLs run on the wall clock, which a loaded machine lets outrun the steps'
	// clock; answers never depend on expiry, so the copy's TTLs are lengthened by 1000 hours
	// (miniredis, whose clock the steps set, checks the real ones).
	src = pexpireCall.ReplaceAllString(src, "redis.call('PEXPIRE', $1, 3600000000 + ")
	d := NewRedis(store)
	d.scripts[a.id] = storage.NewScript(src)
	return d
}

// pexpireCall matches the start of a script's PEXPIRE call up to its TTL argument.
var pexpireCall = regexp.MustCompile(`redis\.call\('PEXPIRE', ([^,]+), `)

// memoryBackend runs the Go twins on a memory store with a settable clock.
type memoryBackend struct {
	now time.Time
	m   *storage.Memory
	d   *MemoryDecider
}

func newMemoryBackend(*testing.T) backend {
	b := &memoryBackend{}
	b.m = storage.NewMemory(storage.MemoryOptions{Now: func() time.Time { return b.now }})
	b.d = NewMemory(b.m)
	return b
}

func (b *memoryBackend) decide(t *testing.T, at time.Time, req Request) Result {
	t.Helper()
	b.now = at
	if !req.DryRun {
		return decideOne(t, b.d, req)
	}
	before := b.peek(req.Key)
	res := decideOne(t, b.d, req)
	if after := b.peek(req.Key); !slices.Equal(after, before) {
		t.Fatalf("dry run %+v changed the state: %v, was %v", req, after, before)
	}
	return res
}

// peek returns a copy of key's state.
func (b *memoryBackend) peek(key string) []int64 {
	var s []int64
	b.m.Peek(key, func(_ time.Time, state []int64) { s = slices.Clone(state) })
	return s
}

func decideOne(t *testing.T, d Decider, req Request) Result {
	t.Helper()
	res, err := d.Decide(context.Background(), []Request{req})
	if err != nil {
		t.Fatalf("decide %+v: %v", req, err)
	}
	if len(res) != 1 {
		t.Fatalf("decide: got %d results, want 1", len(res))
	}
	return res[0]
}
