package storage

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var incr = NewScript(`
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
return {v, ARGV[2]}`)

// counter counts what reaches the server: pipelines of scripts, their commands, and single
// commands.
type counter struct {
	pipelines, pipelined, singles atomic.Int64
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.singles.Add(1)
		return next(ctx, cmd)
	}
}
func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if n := cmds[0].Name(); n != "evalsha" && n != "eval" {
			return next(ctx, cmds) // a new connection's handshake
		}
		c.pipelines.Add(1)
		c.pipelined.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

func newRedis(t *testing.T, addr string) (*Redis, *counter) {
	t.Helper()
	c, err := NewClient("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	cnt := &counter{}
	c.AddHook(cnt)
	return NewRedis(c), cnt
}

func calls(n int, s *Script) []ScriptCall {
	cs := make([]ScriptCall, n)
	for i := range cs {
		cs[i] = ScriptCall{Script: s, Keys: []string{"k" + string(rune('a'+i%26))}, Args: []any{1, i}}
	}
	return cs
}

func TestRunOnePipeline(t *testing.T) {
	srv := redisserver.Start(t)
	r, cnt := newRedis(t, srv.Addr)
	ctx := context.Background()
	if err := r.Ping(ctx); err != nil { // dial, and let the connection's handshake pass
		t.Fatal(err)
	}
	cnt.pipelines.Store(0)

	// A fresh server has no scripts: one EVALSHA pipeline, then one EVAL pipeline.
	replies, err := r.Run(ctx, calls(3, incr))
	if err != nil {
		t.Fatal(err)
	}
	if got := cnt.pipelines.Load(); got != 2 {
		t.Errorf("first run: got %d pipelines, want 2 (EVALSHA, then EVAL for NOSCRIPT)", got)
	}
	if got := replies[2].([]any)[1]; got != "2" {
		t.Errorf("reply 2: got %v, want its own args back", got)
	}

	cnt.pipelines.Store(0)
	cnt.pipelined.Store(0)
	cnt.singles.Store(0)
	const n = 500
	replies, err = r.Run(ctx, calls(n, incr))
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != n {
		t.Fatalf("got %d replies, want %d", len(replies), n)
	}
	if p, c, s := cnt.pipelines.Load(), cnt.pipelined.Load(), cnt.singles.Load(); p != 1 || c != n || s != 0 {
		t.Errorf("got %d pipelines of %d commands and %d single commands, want 1 of %d and 0", p, c, s, n)
	}
	for i, rep := range replies {
		if got := rep.([]any)[1]; got != strconv.Itoa(i) {
			t.Fatalf("reply %d out of order: %v", i, rep)
		}
	}
}

func TestRunAfterScriptFlush(t *testing.T) {
	srv := redisserver.Start(t)
	r, cnt := newRedis(t, srv.Addr)
	ctx := context.Background()
	other := NewScript("return {1, ARGV[2]}")
	batch := append(calls(2, incr), calls(2, other)...)
	if _, err := r.Run(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if err := r.Client().ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	cnt.pipelines.Store(0)
	replies, err := r.Run(ctx, batch)
	if err != nil {
		t.Fatalf("run after SCRIPT FLUSH: %v", err)
	}
	if got := replies[0].([]any)[0]; got != int64(2) {
		t.Errorf("INCRBY after flush: got %v, want 2 (ran exactly once more)", got)
	}
	if got := cnt.pipelines.Load(); got != 2 {
		t.Errorf("got %d pipelines, want 2", got)
	}
	if ok, err := r.Client().ScriptExists(ctx, incr.SHA1(), other.SHA1()).Result(); err != nil || !ok[0] || !ok[1] {
		t.Errorf("scripts cached again: got %v, %v", ok, err)
	}
}

// TestRunErrorFailsItsCall: a call that fails leaves the others' replies valid, and says so
// with a *PartialError naming it.
func TestRunErrorFailsItsCall(t *testing.T) {
	srv := redisserver.Start(t)
	r, _ := newRedis(t, srv.Addr)
	bad := NewScript("return redis.error_reply('boom')")
	batch := append(calls(3, incr), ScriptCall{Script: bad, Keys: []string{"x"}})
	for round := range 2 { // the first time through the NOSCRIPT path, then through EVALSHA
		replies, err := r.Run(context.Background(), batch)
		var partial *PartialError
		if !errors.As(err, &partial) || !strings.Contains(err.Error(), "boom") {
			t.Fatalf("round %d: error %v, want a *PartialError with the script's error", round, err)
		}
		for i, f := range partial.Failed {
			if (f != nil) != (i == 3) {
				t.Errorf("round %d: call %d failed: %v; want only call 3 failed", round, i, f)
			}
		}
		for i := range 3 {
			if got := replies[i].([]any)[0]; got != int64(round+1) {
				t.Errorf("round %d: call %d replied %v, want %d (it ran)", round, i, got, round+1)
			}
		}
	}
	// When every call fails, there is no reply and the error is the call's.
	replies, err := r.Run(context.Background(), []ScriptCall{{Script: bad, Keys: []string{"x"}}})
	var partial *PartialError
	if replies != nil || err == nil || errors.As(err, &partial) {
		t.Errorf("only failing calls: %v, %v; want no replies and a plain error", replies, err)
	}
}

// TestRunOneShardDown: on a ring whose one shard is down (before the health check drops it),
// the calls for the live shard run and the others fail, each told apart.
func TestRunOneShardDown(t *testing.T) {
	a, b := redisserver.Start(t), redisserver.Start(t)
	client, err := Open(Options{Shards: []string{a.Addr, b.Addr}, HeartbeatFrequency: time.Hour, NoBreaker: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	ring := client.(*redis.Ring)
	r := NewRedis(client)
	ctx := context.Background()
	var batch []ScriptCall
	onB := map[int]bool{}
	for i := 0; len(batch) < 8; i++ {
		key := fmt.Sprintf("{k%d}", i)
		c, err := ring.GetShardClientForKey(key)
		if err != nil {
			t.Fatal(err)
		}
		onB[len(batch)] = c.Options().Addr == b.Addr
		batch = append(batch, ScriptCall{Script: incr, Keys: []string{key}, Args: []any{1, 0}})
	}
	if _, err := r.Run(ctx, batch); err != nil {
		t.Fatal(err)
	}
	b.Stop()
	tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	replies, err := r.Run(tctx, batch)
	var partial *PartialError
	if !errors.As(err, &partial) {
		t.Fatalf("one shard down: %v, want a *PartialError", err)
	}
	for i := range batch {
		switch {
		case onB[i] && partial.Failed[i] == nil:
			t.Errorf("call %d on the dead shard did not fail", i)
		case !onB[i] && partial.Failed[i] != nil:
			t.Errorf("call %d on the live shard failed: %v", i, partial.Failed[i])
		case !onB[i] && replies[i].([]any)[0] != int64(2):
			t.Errorf("call %d on the live shard replied %v, want 2", i, replies[i])
		}
	}
}

func TestRedisDown(t *testing.T) {
	srv := redisserver.Start(t)
	r, _ := newRedis(t, srv.Addr)
	if err := r.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.Run(ctx, calls(3, incr)); err == nil {
		t.Error("run on a stopped redis: got no error")
	}
	if err := r.Ping(ctx); err == nil {
		t.Error("ping a stopped redis: got no error")
	}
}

// TestRedisStalled talks to a server that accepts connections and never answers: only the
// context's deadline can end the call.
func TestRedisStalled(t *testing.T) {
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		wg.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	r, _ := newRedis(t, l.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = r.Run(ctx, calls(2, incr))
	var ne net.Error
	if !errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("got %v, want a deadline error", err)
	}
}

func TestNewClient(t *testing.T) {
	c, err := NewClient("redis://127.0.0.1:6379/2")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.(*redis.Client).Options()
	if !o.ContextTimeoutEnabled || o.MaxRetries != 0 || o.DialTimeout != time.Second || o.DialerRetries != 1 || o.DB != 2 {
		t.Errorf("got ContextTimeoutEnabled %v, MaxRetries %d, DialTimeout %v, DialerRetries %d, DB %d; want true, 0, 1s, 1, 2",
			o.ContextTimeoutEnabled, o.MaxRetries, o.DialTimeout, o.DialerRetries, o.DB)
	}
	if _, err := NewClient("http://nope"); err == nil {
		t.Error("an http URL: got no error")
	}
}

func TestScript(t *testing.T) {
	s := NewScript("return 1")
	if s.SHA1() != "e0e1f9fabfc9d4800c877a703b823ac0578ff8db" || s.Source() != "return 1" {
		t.Errorf("got %s %q", s.SHA1(), s.Source())
	}
}

func TestNewClientKeepsThePasswordOutOfErrors(t *testing.T) {
	for _, url := range []string{
		"redis://user:s3cret@127.0.0.1:notaport/0",
		"redis://:s3cret@127.0.0.1:6379/notadb",
		"http://user:s3cret@127.0.0.1:6379/0",
	} {
		_, err := NewClient(url)
		if err == nil {
			t.Errorf("NewClient(%q) = nil error, want one", url)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("NewClient(%q) error %q shows the password", url, err)
		}
	}
}

func TestNewClientRejectsBadAddresses(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"redis://127.0.0.1:99999/0", "port"},
		{"redis://127.0.0.1:0/0", "port"},
		{"127.0.0.1:6379", "want redis://"},
		{"http://127.0.0.1:6379", "want redis://"},
	} {
		if _, err := NewClient(c.url); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewClient(%q) = %v, want an error mentioning %q", c.url, err, c.want)
		}
	}
	c, err := NewClient("redis://127.0.0.1/0") // no port: Redis's own, 6379
	if err != nil {
		t.Fatalf("NewClient without a port: %v", err)
	}
	_ = c.Close()
}
