package storage

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

func TestParseAddrs(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string // joined addresses, or the start of the error
		ok   bool
	}{
		{"127.0.0.1:6379", "127.0.0.1:6379", true},
		{" 127.0.0.1:1 , redis-2:6380,[::1]:7000", "127.0.0.1:1,redis-2:6380,[::1]:7000", true},
		{"", "no address given", false},
		{"127.0.0.1", `entry 1: "127.0.0.1": want host:port`, false},
		{"127.0.0.1:6379,,127.0.0.1:6380", "entry 2: empty address", false},
		{"127.0.0.1:6379,", "entry 2: empty address", false},
		{":6379", `entry 1: ":6379": no host`, false},
		{"127.0.0.1:http", `entry 1: "127.0.0.1:http": port "http" is not a number`, false},
		{"127.0.0.1:0", `entry 1: "127.0.0.1:0": port "0"`, false},
		{"127.0.0.1:65536", `entry 1: "127.0.0.1:65536": port "65536"`, false},
	} {
		got, err := ParseAddrs(c.in)
		switch {
		case c.ok && (err != nil || strings.Join(got, ",") != c.want):
			t.Errorf("ParseAddrs(%q) = %v, %v; want %s", c.in, got, err, c.want)
		case !c.ok && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
			t.Errorf("ParseAddrs(%q) error %v, want it to start with %q", c.in, err, c.want)
		}
	}
}

func TestParseSentinel(t *testing.T) {
	m, addrs, err := ParseSentinel("mymaster@127.0.0.1:26379, 127.0.0.1:26380")
	if err != nil || m != "mymaster" || strings.Join(addrs, ",") != "127.0.0.1:26379,127.0.0.1:26380" {
		t.Errorf("got %q %v %v", m, addrs, err)
	}
	for _, bad := range []string{"127.0.0.1:26379", "@127.0.0.1:26379", "mymaster@", "mymaster@127.0.0.1"} {
		if _, _, err := ParseSentinel(bad); err == nil {
			t.Errorf("ParseSentinel(%q): no error", bad)
		}
	}
}

// TestOpenOptions checks that every topology gets the same safety settings.
func TestOpenOptions(t *testing.T) {
	addrs := []string{"127.0.0.1:1", "127.0.0.1:2"}
	type common struct {
		ctxTimeout            bool
		maxRetries, dialRetry int
		dial                  time.Duration
	}
	want := common{true, 0, 1, time.Second}
	for _, c := range []struct {
		name string
		opts Options
		get  func(redis.UniversalClient) common
	}{
		{"single", Options{URL: "redis://127.0.0.1:1/0"}, func(c redis.UniversalClient) common {
			o := c.(*redis.Client).Options()
			return common{o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries, o.DialTimeout}
		}},
		{"shards", Options{Shards: addrs}, func(c redis.UniversalClient) common {
			o := c.(*redis.Ring).Options()
			if o.HeartbeatFrequency != DefaultHeartbeatFrequency || o.Addrs["127.0.0.1:1"] != "127.0.0.1:1" {
				t.Errorf("ring: heartbeat %v, addrs %v; want %v and shards named by their address", o.HeartbeatFrequency, o.Addrs, DefaultHeartbeatFrequency)
			}
			return common{o.ContextTimeoutEnabled, o.MaxRetries, o.DialerRetries, o.DialTimeout}
		}},
		{"cluster", Options{Cluster: addrs}, func(c redis.UniversalClient) common {
			o := c.(*redis.ClusterClient).Options()
			if o.MaxRetries != -1 || o.MaxRedirects != 3 {
				t.Errorf("cluster: MaxRetries %d, MaxRedirects %d; want -1 (node clients: none) and 3 (MOVED/ASK followed)", o.MaxRetries, o.MaxRedirects)
			}
			return common{o.ContextTimeoutEnabled, 0, o.DialerRetries, o.DialTimeout}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, err := Open(c.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if got := c.get(cl); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
	sentinel, err := Open(Options{SentinelMaster: "m", Sentinels: addrs, Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	_ = sentinel.Close()

	for _, c := range []struct {
		name string
		opts Options
		want string
	}{
		{"none", Options{}, "no Redis topology"},
		{"two", Options{URL: "redis://127.0.0.1:1", Shards: addrs}, "more than one Redis topology given (URL, Shards)"},
		{"bad shard", Options{Shards: []string{"127.0.0.1"}}, "address 1"},
		{"duplicate shard", Options{Shards: []string{"127.0.0.1:1", "127.0.0.1:1"}}, "listed twice"},
		{"sentinel without master", Options{Sentinels: addrs}, "master name"},
		{"credentials twice", Options{URL: "redis://u:p@127.0.0.1:1", Password: "q"}, "credentials both"},
	} {
		if cl, err := Open(c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
			if cl != nil {
				_ = cl.Close()
			}
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// pipelineProbe is a hook on one shard's client: it counts the script pipelines that reach
// the shard, and holds each until every expected shard has one in flight, which proves that
// the per-shard pipelines of one batch run in parallel.
type pipelineProbe struct {
	addr      string
	pipelines atomic.Int64
	cmds      atomic.Int64
	barrier   *barrier
}

type barrier struct {
	mu      sync.Mutex
	want    int
	entered map[string]bool
	all     chan struct{}
	// timedOut counts pipelines that gave up waiting for the others.
	timedOut atomic.Int64
}

func newBarrier(want int) *barrier {
	return &barrier{want: want, entered: map[string]bool{}, all: make(chan struct{})}
}

func (b *barrier) enter(addr string) {
	b.mu.Lock()
	if !b.entered[addr] {
		b.entered[addr] = true
		if len(b.entered) == b.want {
			close(b.all)
		}
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-time.After(5 * time.Second):
		b.timedOut.Add(1)
	}
}

func (p *pipelineProbe) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelineProbe) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelineProbe) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if n := cmds[0].Name(); n == "evalsha" || n == "eval" {
			p.pipelines.Add(1)
			p.cmds.Add(int64(len(cmds)))
			if b := p.barrier; b != nil {
				b.enter(p.addr)
			}
		}
		return next(ctx, cmds)
	}
}

// counterKeys returns n keys shaped like ratelimitd's counter keys, with hash tags.
func counterKeys(n int, run string) []string {
	keys := make([]string, n)
	for i := range keys {
		switch i % 3 {
		case 0:
			keys[i] = fmt.Sprintf("ratelimitd:{api|user=%s-u%d}:fw:60000", run, i)
		case 1:
			keys[i] = fmt.Sprintf("ratelimitd:{shop|tenant=%s-t%d|path=/api/v1}:tb:1000", run, i)
		default:
			keys[i] = fmt.Sprintf("ratelimitd:{edge|ip=10.%d.%d.%d|%s}:sw:3600000", i>>16&255, i>>8&255, i&255, run)
		}
	}
	return keys
}

func keyCalls(keys []string) []ScriptCall {
	cs := make([]ScriptCall, len(keys))
	for i, k := range keys {
		cs[i] = ScriptCall{Script: incr, Keys: []string{k}, Args: []any{1, i}}
	}
	return cs
}

// topology is a running deployment with its client and the shard clients behind it.
type topology struct {
	name    string
	servers []*redisserver.Server
	client  redis.UniversalClient
	shards  func() []*redis.Client
}

func startTopologies(t *testing.T) []topology {
	t.Helper()
	ring := redisserver.StartN(t, 3)
	rc, err := Open(Options{Shards: redisserver.Addrs(ring)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rc.Close() })
	cluster := redisserver.StartCluster(t, 3)
	cc, err := Open(Options{Cluster: cluster.Addrs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return []topology{
		{"shards", ring, rc, func() []*redis.Client { return rc.(*redis.Ring).GetShardClients() }},
		{"cluster", cluster.Nodes, cc, func() []*redis.Client {
			var out []*redis.Client
			var mu sync.Mutex
			if err := cc.(*redis.ClusterClient).ForEachMaster(context.Background(), func(_ context.Context, c *redis.Client) error {
				mu.Lock()
				out = append(out, c)
				mu.Unlock()
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			return out
		}},
	}
}

// commandCalls reads the calls of command from INFO commandstats on each server.
func commandCalls(t *testing.T, servers []*redisserver.Server, command string) []int {
	t.Helper()
	out := make([]int, len(servers))
	for i, s := range servers {
		info, err := s.CLI("INFO", "commandstats")
		if err != nil {
			t.Fatalf("INFO commandstats on %s: %v", s.Addr, err)
		}
		for _, line := range strings.Split(info, "\n") {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+command+":calls="); ok {
				n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
				out[i] = n
			}
		}
	}
	return out
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

// TestOnePipelinePerShard runs batches on a ring of 3 shards and on a 3-primary cluster: each
// batch reaches each shard as one pipeline, the pipelines run in parallel, every call runs
// exactly once (INFO commandstats on every server), and SCRIPT FLUSH on one shard mid-run
// costs one EVAL pipeline on that shard only.
func TestOnePipelinePerShard(t *testing.T) {
	for _, topo := range startTopologies(t) {
		t.Run(topo.name, func(t *testing.T) {
			ctx := context.Background()
			r := NewRedis(topo.client)
			if err := r.Ping(ctx); err != nil {
				t.Fatal(err)
			}
			shards := topo.shards()
			if len(shards) != 3 {
				t.Fatalf("got %d shard clients, want 3", len(shards))
			}
			probes := make([]*pipelineProbe, len(shards))
			for i, c := range shards {
				probes[i] = &pipelineProbe{addr: c.Options().Addr}
				c.AddHook(probes[i])
			}
			arm := func() *barrier {
				b := newBarrier(len(shards))
				for _, p := range probes {
					p.pipelines.Store(0)
					p.cmds.Store(0)
					p.barrier = b
				}
				return b
			}
			const n = 60
			batch := keyCalls(counterKeys(n, topo.name+strconv.FormatInt(time.Now().UnixNano(), 36)))
			// Warm the script caches (EVALSHA, then EVAL on NOSCRIPT), outside the count.
			if _, err := r.Run(ctx, batch); err != nil {
				t.Fatal(err)
			}
			before := commandCalls(t, topo.servers, "evalsha")
			b := arm()
			replies, err := r.Run(ctx, batch)
			if err != nil {
				t.Fatal(err)
			}
			for i, rep := range replies {
				if got := rep.([]any)[0]; got != int64(2) {
					t.Fatalf("call %d: counter %v, want 2 (ran once per batch)", i, got)
				}
			}
			total := int64(0)
			for _, p := range probes {
				if got := p.pipelines.Load(); got != 1 {
					t.Errorf("shard %s: %d pipelines for one batch, want 1", p.addr, got)
				}
				total += p.cmds.Load()
			}
			if total != n {
				t.Errorf("%d commands reached the shards, want %d", total, n)
			}
			if b.timedOut.Load() != 0 {
				t.Errorf("the shards' pipelines did not run in parallel: %d waited 5s for the others", b.timedOut.Load())
			}
			after := commandCalls(t, topo.servers, "evalsha")
			perShard := make([]int, len(after))
			for i := range after {
				perShard[i] = after[i] - before[i]
				if perShard[i] == 0 {
					t.Errorf("server %s ran no EVALSHA: keys not spread", topo.servers[i].Addr)
				}
			}
			if sum(perShard) != n {
				t.Errorf("EVALSHA calls on the servers %v, sum %d, want %d", perShard, sum(perShard), n)
			}
			t.Logf("%s: one batch of %d calls: EVALSHA per server %v, one pipeline per shard, in parallel", topo.name, n, perShard)

			// SCRIPT FLUSH on one shard: its calls come back NOSCRIPT and are sent again as
			// EVAL, on that shard only; every call still runs exactly once.
			flushed := topo.servers[0]
			if out, err := flushed.CLI("SCRIPT", "FLUSH"); err != nil {
				t.Fatalf("SCRIPT FLUSH: %v %s", err, out)
			}
			evalBefore := commandCalls(t, topo.servers, "eval")
			arm()
			replies, err = r.Run(ctx, batch)
			if err != nil {
				t.Fatalf("run after SCRIPT FLUSH on %s: %v", flushed.Addr, err)
			}
			for i, rep := range replies {
				if got := rep.([]any)[0]; got != int64(3) {
					t.Fatalf("call %d after SCRIPT FLUSH: counter %v, want 3", i, got)
				}
			}
			evalAfter := commandCalls(t, topo.servers, "eval")
			for i := range evalAfter {
				d := evalAfter[i] - evalBefore[i]
				if i == 0 && d != perShard[0] {
					t.Errorf("flushed shard %s: %d EVAL, want %d (its calls, once)", topo.servers[i].Addr, d, perShard[0])
				}
				if i != 0 && d != 0 {
					t.Errorf("shard %s (not flushed): %d EVAL, want 0", topo.servers[i].Addr, d)
				}
			}
			for _, p := range probes {
				p.barrier = nil
			}
		})
	}
}

// TestRingDistribution writes 100,002 counter-shaped keys through a ring of 3 shards and
// counts them on each server (DBSIZE); then adds a 4th shard and finds which keys changed
// owner (EXISTS through the 4-shard ring on the 3-shard data).
func TestRingDistribution(t *testing.T) {
	servers := redisserver.StartN(t, 4)
	ctx := context.Background()
	three, err := Open(Options{Shards: redisserver.Addrs(servers[:3])})
	if err != nil {
		t.Fatal(err)
	}
	defer three.Close()
	const n = 100_002
	keys := counterKeys(n, "dist")
	const chunk = 5000
	for start := 0; start < n; start += chunk {
		part := keys[start:min(start+chunk, n)]
		if _, err := three.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range part {
				p.Set(ctx, k, 1, 10*time.Minute)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	counts := make([]int64, 4)
	for i, s := range servers {
		c := redis.NewClient(&redis.Options{Addr: s.Addr})
		counts[i], err = c.DBSize(ctx).Result()
		_ = c.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	if counts[3] != 0 || counts[0]+counts[1]+counts[2] != n {
		t.Fatalf("DBSIZE %v, want %d keys on the first 3 servers", counts, n)
	}
	mean := float64(n) / 3
	busiest := max(counts[0], counts[1], counts[2])
	ratio := float64(busiest) / mean
	t.Logf("3 shards, %d keys: %v per shard, busiest %.4fx the mean", n, counts[:3], ratio)
	if ratio > 1.1 {
		t.Errorf("busiest shard holds %.3fx the mean, want at most 1.1x", ratio)
	}

	four, err := Open(Options{Shards: redisserver.Addrs(servers)})
	if err != nil {
		t.Fatal(err)
	}
	defer four.Close()
	moved, toNew := 0, 0
	newAddr := servers[3].Addr
	for start := 0; start < n; start += chunk {
		part := keys[start:min(start+chunk, n)]
		cmds, err := four.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range part {
				p.Exists(ctx, k)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cmds {
			if c.(*redis.IntCmd).Val() == 1 {
				continue
			}
			moved++
			owner, err := four.(*redis.Ring).GetShardClientForKey(part[i])
			if err != nil {
				t.Fatal(err)
			}
			if owner.Options().Addr == newAddr {
				toNew++
			}
		}
	}
	share := float64(moved) / n
	t.Logf("adding a 4th shard moved %d of %d keys (%.2f%%, ideal 25%%), %d of them to the new shard", moved, n, 100*share, toNew)
	if share > 0.30 {
		t.Errorf("adding a 4th shard moved %.1f%% of keys, want at most 30%%", 100*share)
	}
	if toNew != moved {
		t.Errorf("%d moved keys went to an old shard, want all to the new one", moved-toNew)
	}
}

// TestRingPing: readiness pings every shard the ring counts as up, names a dead one until the
// ring drops it, and fails when no shard is up.
func TestRingPing(t *testing.T) {
	servers := redisserver.StartN(t, 2)
	var mu sync.Mutex
	var events []string
	c, err := Open(Options{Shards: redisserver.Addrs(servers), HeartbeatFrequency: 50 * time.Millisecond,
		OnShardHealth: func(addr string, err error) {
			mu.Lock()
			events = append(events, fmt.Sprintf("%s up=%v", addr, err == nil))
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := NewRedis(c)
	ctx := context.Background()
	if err := r.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	servers[1].Stop()
	if err := r.Ping(ctx); err == nil || !strings.Contains(err.Error(), servers[1].Addr) {
		t.Errorf("ping with %s down: %v, want an error naming it", servers[1].Addr, err)
	}
	waitFor(t, "the ring to drop the dead shard", func() bool { return c.(*redis.Ring).Len() == 1 })
	if err := r.Ping(ctx); err != nil {
		t.Errorf("ping once the dead shard left the ring: %v, want nil", err)
	}
	servers[0].Stop()
	waitFor(t, "the ring to drop both shards", func() bool { return c.(*redis.Ring).Len() == 0 })
	if err := r.Ping(ctx); err == nil || !strings.Contains(err.Error(), "no shard") {
		t.Errorf("ping with every shard down: %v, want no shard up", err)
	}
	servers[1].Restart()
	waitFor(t, "the restarted shard to rejoin", func() bool { return c.(*redis.Ring).Len() == 1 })
	if err := r.Ping(ctx); err != nil {
		t.Errorf("ping after a shard rejoined: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{servers[1].Addr + " up=false", servers[0].Addr + " up=false", servers[1].Addr + " up=true"}
	if strings.Join(events, ";") != strings.Join(want, ";") {
		t.Errorf("shard health events %v, want %v", events, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
