package test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// topoConfig holds the rules of the topology tests: domain "topo" with year-long limits of 50
// for fw (fixed window), sw (sliding window) and tb (token bucket), 1 for gate and 1000 for
// wide.
const topoConfig = "testdata/topology"

// owners tells which server owns a key in a deployment, asking go-redis the way ratelimitd's
// own client routes it.
type owners struct {
	client redis.UniversalClient
}

func newOwners(t *testing.T, opts storage.Options) *owners {
	t.Helper()
	c, err := storage.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &owners{client: c}
}

// of returns the address of the server that owns the counter of (key=value) in domain topo.
func (o *owners) of(t *testing.T, key, value string) string {
	t.Helper()
	k := "ratelimitd:{topo|" + key + "=" + value + "}"
	var c *redis.Client
	var err error
	switch cl := o.client.(type) {
	case *redis.Ring:
		c, err = cl.GetShardClientForKey(k)
	case *redis.ClusterClient:
		c, err = cl.MasterForKey(context.Background(), k)
	default:
		t.Fatalf("no owner lookup for %T", o.client)
	}
	if err != nil {
		t.Fatalf("owner of %s: %v", k, err)
	}
	return c.Options().Addr
}

// valueOn returns, for each address, a value of key whose counter that server owns.
func (o *owners) valueOn(t *testing.T, key string, addrs []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	id := unique(t)
	for i := 0; len(out) < len(addrs); i++ {
		if i == 10_000 {
			t.Fatalf("no value of %s lands on every server of %v: %v", key, addrs, out)
		}
		v := id + "-" + strconv.Itoa(i)
		if a := o.of(t, key, v); out[a] == "" {
			out[a] = v
		}
	}
	return out
}

// checkCrossShardRefund sends requests whose two descriptors live on different servers; when
// gate refuses, what wide was charged on the other server is refunded.
func checkCrossShardRefund(t *testing.T, s *service, o *owners, addrs []string) {
	t.Helper()
	wide := o.valueOn(t, "wide", addrs)
	gate := o.valueOn(t, "gate", addrs)
	wv, gv := wide[addrs[0]], gate[addrs[1]]
	req := request("topo", desc("wide", wv), desc("gate", gv))
	if resp := s.mustCall(req); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("first request: %v, want OK", resp)
	}
	resp := s.mustCall(req)
	st := resp.GetStatuses()
	if resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT || st[0].GetCode() != rlsv3.RateLimitResponse_OK || st[1].GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("second request: %v, want OVER_LIMIT with wide OK and gate OVER_LIMIT", resp)
	}
	if got := st[0].GetLimitRemaining(); got != 999 {
		t.Errorf("wide in the refused request: remaining %d, want 999 (its charge refunded)", got)
	}
	resp = s.mustCall(request("topo", desc("wide", wv)))
	if got := resp.GetStatuses()[0].GetLimitRemaining(); got != 998 {
		t.Errorf("wide alone afterwards: remaining %d, want 998 (charged by the first and this request only)", got)
	}
	t.Logf("wide on %s, gate on %s: the refusal on one server refunded the other", addrs[0], addrs[1])
}

func shardArgs(flag string, addrs []string, extra ...string) []string {
	return append([]string{flag, strings.Join(addrs, ",")}, extra...)
}

// TestReplicasShareShards runs 3 ratelimitd processes over the same 3 shards. A client spreads
// concurrent requests round-robin over them, far beyond the limit of one key per algorithm:
// exactly the limit is admitted, since every decision is one atomic script on the key's shard.
func TestReplicasShareShards(t *testing.T) {
	shards := redisserver.StartN(t, 3)
	addrs := redisserver.Addrs(shards)
	var replicas []*service
	for range 3 {
		replicas = append(replicas, startService(t, serviceOptions{configDir: topoConfig, args: shardArgs("-redis-shards", addrs)}))
	}
	id := unique(t)
	const goroutines, each, limit = 8, 40, 50
	for _, alg := range []string{"fw", "sw", "tb"} {
		t.Run(alg, func(t *testing.T) {
			var next, admitted, refused, failed atomic.Int64
			var wg sync.WaitGroup
			for range goroutines {
				wg.Go(func() {
					for range each {
						s := replicas[next.Add(1)%int64(len(replicas))]
						resp, err := s.call(request("topo", desc(alg, id)))
						switch {
						case err != nil:
							failed.Add(1)
						case resp.GetOverallCode() == rlsv3.RateLimitResponse_OK:
							admitted.Add(1)
						default:
							refused.Add(1)
						}
					}
				})
			}
			wg.Wait()
			t.Logf("%s: %d requests over 3 replicas and 3 shards: %d admitted, %d refused, %d failed (limit %d)",
				alg, goroutines*each, admitted.Load(), refused.Load(), failed.Load(), limit)
			if failed.Load() != 0 {
				t.Errorf("%d requests failed, want none", failed.Load())
			}
			if admitted.Load() != limit {
				t.Errorf("admitted %d, want exactly the limit %d", admitted.Load(), limit)
			}
		})
	}
	o := newOwners(t, storage.Options{Shards: addrs})
	checkCrossShardRefund(t, replicas[0], o, addrs)
}

// TestCluster runs the conformance scenarios and the cross-shard refund on a 3-primary Redis
// Cluster.
func TestCluster(t *testing.T) {
	cluster := redisserver.StartCluster(t, 3)
	addrs := cluster.Addrs()
	t.Run("conformance", func(t *testing.T) {
		// One seed is enough: the client learns the others from CLUSTER SLOTS.
		s := startService(t, serviceOptions{configDir: "testdata/config", args: shardArgs("-redis-cluster", addrs[:1])})
		for name, sc := range loadScenarios(t) {
			t.Run(name, func(t *testing.T) { runScenario(t, s, sc) })
		}
	})
	t.Run("cross-shard refund", func(t *testing.T) {
		s := startService(t, serviceOptions{configDir: topoConfig, args: shardArgs("-redis-cluster", addrs)})
		checkCrossShardRefund(t, s, newOwners(t, storage.Options{Cluster: addrs}), addrs)
	})
}

// TestShardKilled kills one of 3 shards under a running service, then restarts it. Requests
// for its keys fail with UNAVAILABLE (never another code) until go-redis's health check drops
// it; then they move to the live shards, where their counters start again (the bounded
// overshoot); keys on the other shards never fail. Restarted, it rejoins and its keys come back.
func TestShardKilled(t *testing.T) {
	shards := redisserver.StartN(t, 3)
	addrs := redisserver.Addrs(shards)
	s := startService(t, serviceOptions{configDir: topoConfig, args: shardArgs("-redis-shards", addrs)})
	o := newOwners(t, storage.Options{Shards: addrs})
	values := o.valueOn(t, "fw", addrs)
	victim := shards[1]
	dead, live := values[victim.Addr], []string{values[addrs[0]], values[addrs[2]]}

	for range 3 {
		for _, v := range values {
			s.mustCall(request("topo", desc("fw", v)))
		}
	}
	// remaining charges one hit to (fw=v); peek charges nothing.
	call := func(v string, hits uint64) (uint32, error) {
		d := desc("fw", v)
		d.HitsAddend = wrapperspb.UInt64(hits)
		resp, err := s.call(request("topo", d))
		if err != nil {
			return 0, err
		}
		return resp.GetStatuses()[0].GetLimitRemaining(), nil
	}
	remaining := func(v string) (uint32, error) { return call(v, 1) }
	peek := func(v string) (uint32, error) { return call(v, 0) }

	victim.Stop()
	codesSeen := map[codes.Code]int{}
	liveFailures := 0
	var moved uint32
	for i := 0; ; i++ {
		if i == 2000 {
			t.Fatalf("the dead shard's key never moved to a live shard (codes %v)", codesSeen)
		}
		for _, v := range live {
			if _, err := peek(v); err != nil {
				liveFailures++
				t.Errorf("key on a live shard failed: %v", err)
			}
		}
		r, err := remaining(dead)
		codesSeen[status.Code(err)]++
		if err == nil {
			moved = r
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("while the shard was down: codes for its key %v; failures of keys on live shards: %d", codesSeen, liveFailures)
	if codesSeen[codes.Unavailable] == 0 || len(codesSeen) != 2 {
		t.Errorf("codes for the dead shard's key %v, want UNAVAILABLE until it moved, then OK", codesSeen)
	}
	// 3 hits on the dead shard are lost: the counter starts again on its new shard.
	if moved != 49 {
		t.Errorf("dead shard's key on its new shard: remaining %d, want 49 (a fresh counter)", moved)
	}
	if code, body := s.get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with a shard dropped from the ring: %d %s, want 200 (the live shards serve every key)", code, body)
	}

	victim.Restart()
	key := "ratelimitd:{topo|fw=" + dead + "}:fw:31536000000"
	for i := 0; ; i++ {
		if i == 2000 {
			t.Fatal("the restarted shard never got its key back")
		}
		if _, err := remaining(dead); err != nil {
			t.Fatalf("key of the restarted shard: %v", err)
		}
		if out, err := victim.CLI("EXISTS", key); err == nil && strings.TrimSpace(out) == "1" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, v := range live {
		if r, err := peek(v); err != nil || r != 47 {
			t.Errorf("key on a live shard after the restart: remaining %d, %v; want 47 (its counter kept)", r, err)
		}
	}
	s.waitHTTP("/readyz", 10*time.Second)
}

// TestSentinel serves from a primary found through a Sentinel.
func TestSentinel(t *testing.T) {
	primary := redisserver.Start(t)
	sentinel := redisserver.StartSentinel(t, "mymaster", primary)
	s := startService(t, serviceOptions{configDir: topoConfig, args: []string{"-redis-sentinel", "mymaster@" + sentinel.Addr}})
	id := unique(t)
	if resp := s.mustCall(request("topo", desc("gate", id))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
		t.Fatalf("first: %v, want OK", resp.GetOverallCode())
	}
	if resp := s.mustCall(request("topo", desc("gate", id))); resp.GetOverallCode() != rlsv3.RateLimitResponse_OVER_LIMIT {
		t.Fatalf("second: %v, want OVER_LIMIT", resp.GetOverallCode())
	}
	if out, err := primary.CLI("EXISTS", "ratelimitd:{topo|gate="+id+"}:fw:31536000000"); err != nil || strings.TrimSpace(out) != "1" {
		t.Errorf("counter on the primary: %q %v, want it there", out, err)
	}
}

// checkLimit: gate admits one request, then refuses.
func checkLimit(t *testing.T, s *service) {
	t.Helper()
	id := unique(t)
	for i, want := range []rlsv3.RateLimitResponse_Code{rlsv3.RateLimitResponse_OK, rlsv3.RateLimitResponse_OVER_LIMIT} {
		if resp := s.mustCall(request("topo", desc("gate", id))); resp.GetOverallCode() != want {
			t.Fatalf("call %d: %v, want %v", i+1, resp.GetOverallCode(), want)
		}
	}
}

// TestAuth: a password (from the environment), an ACL user on a ring of shards, and a wrong
// password, which leaves the service alive, not ready, answering UNAVAILABLE, and saying why.
func TestAuth(t *testing.T) {
	t.Run("password", func(t *testing.T) {
		rs := redisserver.Start(t, "--requirepass", "s3cret")
		s := startService(t, serviceOptions{configDir: topoConfig, redisURL: rs.URL(), env: []string{"RATELIMITD_REDIS_PASSWORD=s3cret"}})
		checkLimit(t, s)
	})
	t.Run("password in the URL", func(t *testing.T) {
		rs := redisserver.Start(t, "--requirepass", "s3cret")
		s := startService(t, serviceOptions{configDir: topoConfig, redisURL: "redis://:s3cret@" + rs.Addr + "/0"})
		checkLimit(t, s)
	})
	t.Run("ACL user on shards", func(t *testing.T) {
		acl := []string{"--user", "default", "off", "--user", "limiter", "on", ">pw", "~ratelimitd:*", "+@all", "-@dangerous"}
		shards := redisserver.StartN(t, 2, acl...)
		s := startService(t, serviceOptions{configDir: topoConfig,
			args: shardArgs("-redis-shards", redisserver.Addrs(shards), "-redis-username", "limiter", "-redis-password", "pw")})
		checkLimit(t, s)
	})
	t.Run("wrong password", func(t *testing.T) {
		rs := redisserver.Start(t, "--requirepass", "s3cret")
		s := startService(t, serviceOptions{configDir: topoConfig, redisURL: rs.URL(), args: []string{"-redis-password", "wrong-pw"}, notReady: true})
		if code, body := s.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "WRONGPASS") {
			t.Errorf("/readyz: %d %q, want 503 with the reason (WRONGPASS)", code, body)
		}
		if _, err := s.call(request("topo", desc("gate", unique(t)))); status.Code(err) != codes.Unavailable {
			t.Errorf("request: %v, want UNAVAILABLE", err)
		}
		logs := s.logs.String()
		if !strings.Contains(logs, "redis refused the credentials") {
			t.Errorf("no clear log line about the credentials:\n%s", logs)
		}
		if strings.Contains(logs, "wrong-pw") {
			t.Errorf("the password is in the log:\n%s", logs)
		}
	})
}

// TestTLS connects over TLS: mutual TLS to one server, and TLS to a ring of shards.
func TestTLS(t *testing.T) {
	files := redisserver.NewTLSFiles(t)
	t.Run("mutual TLS", func(t *testing.T) {
		rs := redisserver.StartTLS(t, files, true)
		s := startService(t, serviceOptions{configDir: topoConfig, redisURL: "rediss://" + rs.Addr + "/0",
			args: []string{"-redis-tls-ca", files.CA, "-redis-tls-cert", files.ClientCert, "-redis-tls-key", files.ClientKey}})
		checkLimit(t, s)
	})
	t.Run("shards", func(t *testing.T) {
		a, b := redisserver.StartTLS(t, files, false), redisserver.StartTLS(t, files, false)
		s := startService(t, serviceOptions{configDir: topoConfig,
			args: shardArgs("-redis-shards", []string{a.Addr, b.Addr}, "-redis-tls", "-redis-tls-ca", files.CA, "-redis-tls-server-name", "localhost")})
		checkLimit(t, s)
	})
	t.Run("unknown CA", func(t *testing.T) {
		rs := redisserver.StartTLS(t, files, false)
		s := startService(t, serviceOptions{configDir: topoConfig, redisURL: "rediss://" + rs.Addr + "/0", notReady: true})
		if code, body := s.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "certificate") {
			t.Errorf("/readyz with a certificate from an unknown CA: %d %q, want 503 naming the certificate", code, body)
		}
	})
}

// TestTopologyFlagErrors: mistyped topologies stop ratelimitd at start with the flag named.
func TestTopologyFlagErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		env  []string
		code int
		want string
	}{
		{"two topologies", []string{"-redis-url", "redis://127.0.0.1:1/0", "-redis-shards", "127.0.0.1:1"}, nil, 2, "-redis-url and -redis-shards"},
		{"two topologies, one from the environment", []string{"-redis-cluster", "127.0.0.1:1"}, []string{"RATELIMITD_REDIS_SENTINEL=m@127.0.0.1:1"}, 2, "-redis-cluster and -redis-sentinel"},
		{"missing port", []string{"-redis-shards", "127.0.0.1:6379,127.0.0.1"}, nil, 2, "-redis-shards: entry 2"},
		{"bad port", []string{"-redis-cluster", "127.0.0.1:99999"}, nil, 2, "-redis-cluster: entry 1"},
		{"empty entry", []string{"-redis-shards", "127.0.0.1:6379,"}, nil, 2, "-redis-shards: entry 2: empty address"},
		{"bad sentinel", []string{"-redis-sentinel", "127.0.0.1:26379"}, nil, 2, "-redis-sentinel"},
		{"password without topology", []string{"-redis-password", "x"}, nil, 2, "-redis-password"},
		{"missing CA file", []string{"-redis-url", "rediss://127.0.0.1:1/0", "-redis-tls-ca", "/nonexistent/ca.pem"}, nil, 1, "-redis-tls-ca"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := runBinary(t, c.env, append([]string{"serve", "-config", topoConfig}, c.args...)...)
			if got := exitCode(err); got != c.code {
				t.Errorf("exit %d, want %d; output:\n%s", got, c.code, out)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("output %q does not name %q", out, c.want)
			}
		})
	}
}
