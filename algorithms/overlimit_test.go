package algorithms

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ratelimitd/ratelimitd/storage"
	"github.com/ratelimitd/ratelimitd/test/redisserver"
	"github.com/ratelimitd/ratelimitd/test/testclock"
)

// countingDecider counts the calls and requests that reach the Decider it wraps.
type countingDecider struct {
	next    Decider
	mu      sync.Mutex
	batches [][]Request
}

func (d *countingDecider) Decide(ctx context.Context, reqs []Request) ([]Result, error) {
	d.mu.Lock()
	d.batches = append(d.batches, append([]Request(nil), reqs...))
	d.mu.Unlock()
	return d.next.Decide(ctx, reqs)
}

func (d *countingDecider) calls() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.batches)
}

func (d *countingDecider) last() []Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.batches[len(d.batches)-1]
}

// newCachedMemory returns a cache of size over a counting decider on a memory store, all on
// one clock set to epoch.
func newCachedMemory(size int) (*OverLimitCache, *countingDecider, *testclock.Clock) {
	clk := testclock.New(epoch)
	counter := &countingDecider{next: NewMemory(storage.NewMemory(storage.MemoryOptions{Now: clk.Now}))}
	return NewOverLimitCache(counter, OverLimitCacheOptions{Size: size, Now: clk.Now}), counter, clk
}

// fw2 is a fixed window of 2 per second on key k.
func fw2(k string) Request {
	return Request{Algorithm: FixedWindow, Key: k, Limit: 2, Window: time.Second, Hits: 1}
}

// olStep is one decision of a timed table: at is relative to epoch; calls is the number of
// store calls the decision must make.
type olStep struct {
	name  string
	at    time.Duration
	req   Request
	want  Result
	calls int
}

func runOverLimitSteps(t *testing.T, c *OverLimitCache, counter *countingDecider, clk *testclock.Clock, steps []olStep) {
	t.Helper()
	for _, s := range steps {
		clk.Set(epoch.Add(s.at))
		before := counter.calls()
		got := decideOne(t, c, s.req)
		if got != s.want {
			t.Errorf("%s: got %+v, want %+v", s.name, got, s.want)
		}
		if n := counter.calls() - before; n != s.calls {
			t.Errorf("%s: %d store calls, want %d", s.name, n, s.calls)
		}
	}
}

func olRefused(limit int64, reset, retry time.Duration) Result {
	return Result{Limit: limit, ResetAfter: reset, RetryAfter: retry}
}

func olAdmitted(remaining, limit int64, reset time.Duration) Result {
	return Result{Allowed: true, Remaining: remaining, Limit: limit, ResetAfter: reset}
}

func TestOverLimitCacheHitUntilRetryAfter(t *testing.T) {
	c, counter, clk := newCachedMemory(16)
	ms := time.Millisecond
	runOverLimitSteps(t, c, counter, clk, []olStep{
		{"first", 100 * ms, fw2("k"), olAdmitted(1, 2, 900*ms), 1},
		{"second", 100 * ms, fw2("k"), olAdmitted(0, 2, 900*ms), 1},
		{"refused by the store", 100 * ms, fw2("k"), olRefused(2, 900*ms, 900*ms), 1},
		{"from the cache", 400 * ms, fw2("k"), olRefused(2, 600*ms, 600*ms), 0},
		{"from the cache, rounded up", 999*ms + 500*time.Microsecond, fw2("k"), olRefused(2, ms, ms), 0},
		{"other key", 999 * ms, fw2("other"), olAdmitted(1, 2, ms), 1},
		{"retry-after elapsed: the store admits", time.Second, fw2("k"), olAdmitted(1, 2, time.Second), 1},
		{"admitted again", time.Second, fw2("k"), olAdmitted(0, 2, time.Second), 1},
		{"refused again", 1500 * ms, fw2("k"), olRefused(2, 500*ms, 500*ms), 1},
		{"cached again", 1600 * ms, fw2("k"), olRefused(2, 400*ms, 400*ms), 0},
	})
	if st := c.Stats(); st.Hits != 3 || st.Misses != 7 || st.Entries != 1 {
		t.Errorf("stats: got %+v, want 3 hits, 7 misses, 1 entry", st)
	}
}

func TestOverLimitCacheTokenBucketResetAfter(t *testing.T) {
	c, counter, clk := newCachedMemory(16)
	ms := time.Millisecond
	// 1 token per 100ms, burst 3: the bucket is full again 300ms after it was emptied.
	tb := Request{Algorithm: TokenBucket, Key: "tb", Limit: 10, Window: time.Second, Burst: 3, Hits: 1}
	runOverLimitSteps(t, c, counter, clk, []olStep{
		{"1", 0, tb, olAdmitted(2, 3, 100*ms), 1},
		{"2", 0, tb, olAdmitted(1, 3, 200*ms), 1},
		{"3", 0, tb, olAdmitted(0, 3, 300*ms), 1},
		{"refused by the store", 0, tb, olRefused(3, 300*ms, 100*ms), 1},
		{"from the cache", 40 * ms, tb, olRefused(3, 260*ms, 60*ms), 0},
		{"a token is back", 100 * ms, tb, olAdmitted(0, 3, 300*ms), 1},
	})
}

func TestOverLimitCacheBypass(t *testing.T) {
	ms := time.Millisecond
	exhaust := func(t *testing.T) (*OverLimitCache, *countingDecider, *testclock.Clock) {
		c, counter, clk := newCachedMemory(16)
		runOverLimitSteps(t, c, counter, clk, []olStep{
			{"1", 0, fw2("k"), olAdmitted(1, 2, time.Second), 1},
			{"2", 0, fw2("k"), olAdmitted(0, 2, time.Second), 1},
			{"refused", 0, fw2("k"), olRefused(2, time.Second, time.Second), 1},
		})
		return c, counter, clk
	}
	with := func(f func(r *Request)) Request {
		r := fw2("k")
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name  string
		steps []olStep
	}{
		{"a raised limit goes to the store, whose admission forgets the refusal", []olStep{
			{"limit 5", 10 * ms, with(func(r *Request) { r.Limit = 5 }), olAdmitted(2, 5, 990*ms), 1},
			{"limit 2 again: the store", 20 * ms, fw2("k"), olRefused(2, 980*ms, 980*ms), 1},
			{"limit 2 again: cached", 30 * ms, fw2("k"), olRefused(2, 970*ms, 970*ms), 0},
		}},
		{"a lowered limit goes to the store and replaces the refusal", []olStep{
			{"limit 1", 10 * ms, with(func(r *Request) { r.Limit = 1 }), olRefused(1, 990*ms, 990*ms), 1},
			{"limit 1: cached", 20 * ms, with(func(r *Request) { r.Limit = 1 }), olRefused(1, 980*ms, 980*ms), 0},
			{"limit 2: the store", 30 * ms, fw2("k"), olRefused(2, 970*ms, 970*ms), 1},
		}},
		{"another window goes to the store", []olStep{
			{"window", 10 * ms, with(func(r *Request) { r.Window = 2 * time.Second }), olAdmitted(1, 2, 1990*ms), 1},
		}},
		{"another burst goes to the store", []olStep{
			{"burst 7", 10 * ms, with(func(r *Request) { r.Burst = 7 }), olRefused(2, 990*ms, 990*ms), 1},
			{"burst 7: cached", 20 * ms, with(func(r *Request) { r.Burst = 7 }), olRefused(2, 980*ms, 980*ms), 0},
			{"burst 0: the store", 30 * ms, fw2("k"), olRefused(2, 970*ms, 970*ms), 1},
		}},
		{"another cost goes to the store; a cost that can never fit is not remembered", []olStep{
			{"3 hits", 10 * ms, with(func(r *Request) { r.Hits = 3 }), Result{Limit: 2, ResetAfter: 990 * ms, Never: true}, 1},
			{"3 hits again", 20 * ms, with(func(r *Request) { r.Hits = 3 }), Result{Limit: 2, ResetAfter: 980 * ms, Never: true}, 1},
			{"1 hit: still cached", 30 * ms, fw2("k"), olRefused(2, 970*ms, 970*ms), 0},
		}},
		{"count_rejected goes to the store", []olStep{
			{"count_rejected", 10 * ms, with(func(r *Request) { r.CountRejected = true }), olRefused(2, 990*ms, 990*ms), 1},
			{"count_rejected again", 20 * ms, with(func(r *Request) { r.CountRejected = true }), olRefused(2, 980*ms, 980*ms), 1},
			{"still cached for the others", 30 * ms, fw2("k"), olRefused(2, 970*ms, 970*ms), 0},
		}},
		{"a check goes to the store and keeps the refusal", []olStep{
			{"check", 10 * ms, with(func(r *Request) { r.Hits = 0 }), olAdmitted(0, 2, 990*ms), 1},
			{"still cached", 20 * ms, fw2("k"), olRefused(2, 980*ms, 980*ms), 0},
		}},
		{"a refund goes to the store and forgets the refusal", []olStep{
			{"refund", 10 * ms, with(func(r *Request) { r.Hits = -1 }), olAdmitted(1, 2, 990*ms), 1},
			{"admitted by the store", 20 * ms, fw2("k"), olAdmitted(0, 2, 980*ms), 1},
			{"refused by the store", 30 * ms, fw2("k"), olRefused(2, 970*ms, 970*ms), 1},
			{"cached", 40 * ms, fw2("k"), olRefused(2, 960*ms, 960*ms), 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, counter, clk := exhaust(t)
			runOverLimitSteps(t, c, counter, clk, tc.steps)
		})
	}
}

// refuseAll refuses every request with a retry-after of one second.
type refuseAll struct{}

func (refuseAll) Decide(_ context.Context, reqs []Request) ([]Result, error) {
	out := make([]Result, len(reqs))
	for i, r := range reqs {
		out[i] = Result{Limit: r.Limit, ResetAfter: time.Second, RetryAfter: time.Second}
	}
	return out, nil
}

func TestOverLimitCacheBypassAlgorithm(t *testing.T) {
	clk := testclock.New(epoch)
	counter := &countingDecider{next: refuseAll{}}
	c := NewOverLimitCache(counter, OverLimitCacheOptions{Size: 16, Now: clk.Now})
	tb := fw2("k")
	tb.Algorithm = TokenBucket
	for i, s := range []struct {
		req   Request
		calls int
	}{{fw2("k"), 1}, {fw2("k"), 0}, {tb, 1}, {tb, 0}, {fw2("k"), 1}} {
		before := counter.calls()
		decideOne(t, c, s.req)
		if n := counter.calls() - before; n != s.calls {
			t.Errorf("step %d (%s): %d store calls, want %d", i, s.req.Algorithm, n, s.calls)
		}
	}
}

// TestOverLimitCacheSharedCapacity checks that refusals by algorithms that share capacity
// between classes or tenants are never remembered.
func TestOverLimitCacheSharedCapacity(t *testing.T) {
	counter := &countingDecider{next: refuseAll{}}
	c := NewOverLimitCache(counter, OverLimitCacheOptions{Size: 16})
	for _, n := range []Name{"priority", "fair_share"} {
		req := fw2("k-" + string(n))
		req.Algorithm = n
		before := counter.calls()
		for range 3 {
			decideOne(t, c, req)
		}
		if got := counter.calls() - before; got != 3 {
			t.Errorf("%s: %d store calls for 3 refused requests, want 3", n, got)
		}
	}
}

// TestOverLimitCacheBatch checks that the requests the cache cannot answer go to the store in
// one call, in their order, and that the answers come back in the order of the requests.
func TestOverLimitCacheBatch(t *testing.T) {
	c, counter, clk := newCachedMemory(16)
	ctx := context.Background()
	for range 3 {
		decideOne(t, c, fw2("a"))
		decideOne(t, c, fw2("b"))
	}
	clk.Set(epoch.Add(100 * time.Millisecond))
	check := fw2("a")
	check.Hits = 0
	refund := fw2("b")
	refund.Hits = -1
	reqs := []Request{fw2("a"), fw2("c"), check, fw2("b"), refund, fw2("a")}
	before := counter.calls()
	got, err := c.Decide(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if n := counter.calls() - before; n != 1 {
		t.Fatalf("%d store calls, want 1", n)
	}
	sent := counter.last()
	wantSent := []Request{fw2("c"), check, refund}
	if fmt.Sprint(sent) != fmt.Sprint(wantSent) {
		t.Errorf("sent to the store: got %+v, want %+v", sent, wantSent)
	}
	ms := time.Millisecond
	want := []Result{
		olRefused(2, 900*ms, 900*ms),
		olAdmitted(1, 2, 900*ms),
		olAdmitted(0, 2, 900*ms),
		olRefused(2, 900*ms, 900*ms), // b is answered from the cache before the refund forgets it
		olAdmitted(1, 2, 900*ms),
		olRefused(2, 900*ms, 900*ms),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("results:\ngot  %+v\nwant %+v", got, want)
	}
	// The refund made b forget its refusal: the next b goes to the store and is admitted.
	before = counter.calls()
	if r := decideOne(t, c, fw2("b")); !r.Allowed {
		t.Errorf("b after the refund: got %+v, want admitted", r)
	}
	if n := counter.calls() - before; n != 1 {
		t.Errorf("b after the refund: %d store calls, want 1", n)
	}

	// A batch answered entirely from the cache makes no store call.
	before = counter.calls()
	got, err = c.Decide(ctx, []Request{fw2("a"), fw2("a")})
	if err != nil || len(got) != 2 || got[0].Allowed || got[1].Allowed {
		t.Errorf("all cached: got %+v, %v; want two refusals", got, err)
	}
	if n := counter.calls() - before; n != 0 {
		t.Errorf("all cached: %d store calls, want 0", n)
	}
}

func TestOverLimitCacheErrors(t *testing.T) {
	c, _, _ := newCachedMemory(16)
	for range 3 {
		decideOne(t, c, fw2("a"))
	}
	bad := fw2("b")
	bad.Window = 0
	if _, err := c.Decide(context.Background(), []Request{fw2("a"), bad}); err == nil {
		t.Error("a batch with an invalid request: no error")
	}
}

func TestOverLimitCacheSizeBound(t *testing.T) {
	const size = 3
	c, counter, _ := newCachedMemory(size)
	exhaust := func(k string) {
		t.Helper()
		for range 3 {
			decideOne(t, c, fw2(k))
		}
		if n := c.Stats().Entries; n > size {
			t.Fatalf("after %s: %d entries, want at most %d", k, n, size)
		}
	}
	cached := func(k string) bool {
		t.Helper()
		before := counter.calls()
		decideOne(t, c, fw2(k))
		return counter.calls() == before
	}
	for i := range 10 {
		exhaust("k" + strconv.Itoa(i))
	}
	// k7, k8, k9 are remembered; touching k7 makes k8 the least recently used.
	for _, k := range []string{"k8", "k9", "k7"} {
		if !cached(k) {
			t.Errorf("%s: not cached, want cached", k)
		}
	}
	exhaust("k10")
	for k, want := range map[string]bool{"k7": true, "k9": true, "k10": true} {
		if got := cached(k); got != want {
			t.Errorf("%s cached: got %v, want %v", k, got, want)
		}
	}
	if cached("k8") {
		t.Error("k8: cached, want evicted as the least recently used")
	}
	if n := c.Stats().Entries; n != size {
		t.Errorf("entries: got %d, want %d", n, size)
	}

	// Size 0 remembers nothing.
	c, counter, _ = newCachedMemory(0)
	for range 5 {
		decideOne(t, c, fw2("k"))
	}
	if n := counter.calls(); n != 5 || c.Stats().Entries != 0 {
		t.Errorf("size 0: %d store calls and %d entries, want 5 and 0", n, c.Stats().Entries)
	}
}

// TestOverLimitCacheFlood sends a flood against one exhausted key: only the first refusal
// reaches the store.
func TestOverLimitCacheFlood(t *testing.T) {
	const limit, flood = 10, 1000
	c, counter, clk := newCachedMemory(16)
	req := Request{Algorithm: FixedWindow, Key: "hot", Limit: limit, Window: time.Minute, Hits: 1}
	for range limit {
		if r := decideOne(t, c, req); !r.Allowed {
			t.Fatalf("under the limit: got %+v, want admitted", r)
		}
	}
	before := counter.calls()
	for i := range flood {
		clk.Set(epoch.Add(time.Duration(i) * time.Millisecond))
		if r := decideOne(t, c, req); r.Allowed || r.RetryAfter <= 0 {
			t.Fatalf("flood %d: got %+v, want refused with a retry-after", i, r)
		}
	}
	if n := counter.calls() - before; n != 1 {
		t.Errorf("flood of %d on an exhausted key: %d store calls, want 1", flood, n)
	}
	if st := c.Stats(); st.Hits != flood-1 || st.Misses != limit+1 {
		t.Errorf("stats: got %+v, want %d hits, %d misses", st, flood-1, limit+1)
	}
}

// TestOverLimitCacheConcurrent runs floods, refunds, checks and evictions from many goroutines
// (run it with -race): every answer for an exhausted key is a refusal, and every cacheable
// request is counted once as a hit or a miss.
func TestOverLimitCacheConcurrent(t *testing.T) {
	c, _, _ := newCachedMemory(4)
	ctx := context.Background()
	hot := Request{Algorithm: FixedWindow, Key: "hot", Limit: 5, Window: time.Minute, Hits: 1}
	for range 5 {
		decideOne(t, c, hot)
	}
	const workers, rounds = 8, 300
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				other := Request{Algorithm: TokenBucket, Key: fmt.Sprintf("k%d", (w*rounds+i)%13), Limit: 1, Window: time.Hour, Hits: 1}
				refund := other
				refund.Hits = -1
				check := hot
				check.Hits = 0
				res, err := c.Decide(ctx, []Request{hot, other, check, refund, hot})
				if err != nil {
					errs <- err
					return
				}
				if res[0].Allowed || res[4].Allowed || res[0].RetryAfter <= 0 {
					errs <- fmt.Errorf("worker %d round %d: hot key answered %+v, %+v; want refused", w, i, res[0], res[4])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := c.Stats()
	if want := uint64(5 + workers*rounds*3); st.Hits+st.Misses != want {
		t.Errorf("hits %d + misses %d = %d, want %d cacheable requests", st.Hits, st.Misses, st.Hits+st.Misses, want)
	}
	if st.Entries > 4 {
		t.Errorf("entries: got %d, want at most 4", st.Entries)
	}
}

var evalshaCalls = regexp.MustCompile(`(?m)^cmdstat_(?:evalsha|eval):calls=(\d+)`)

// scriptCalls reads the number of EVALSHA and EVAL calls from INFO commandstats.
func scriptCalls(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range evalshaCalls.FindAllStringSubmatch(info, -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	return n
}

// TestOverLimitCacheRedis floods one exhausted key on a real redis-server through the cache:
// after the first refusal, no script reaches Redis (INFO commandstats).
func TestOverLimitCacheRedis(t *testing.T) {
	srv := redisserver.Start(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = client.Close() })
	c := NewOverLimitCache(NewRedis(storage.NewRedis(client)), OverLimitCacheOptions{Size: 1024})
	// 5 per hour: the first refusal's retry-after (12 minutes) outlasts the test.
	req := Request{Algorithm: TokenBucket, Key: "{hot}", Limit: 5, Window: time.Hour, Hits: 1}
	const flood = 1000
	// Load the script first (the first EVALSHA fails with NOSCRIPT and is followed by EVAL).
	warm := req
	warm.Key = "{warm}"
	decideOne(t, c, warm)
	before := scriptCalls(t, client)
	var admitted int
	for range 5 + flood {
		if decideOne(t, c, req).Allowed {
			admitted++
		}
	}
	if admitted != 5 {
		t.Errorf("admitted %d, want 5", admitted)
	}
	if n := scriptCalls(t, client) - before; n != 6 {
		t.Errorf("scripts run by Redis for 5 admissions and a flood of %d: %d, want 6", flood, n)
	}
}
