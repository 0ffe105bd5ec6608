// Command loadgen drives ratelimitd's ShouldRateLimit over real gRPC at a fixed concurrency for
// a fixed time and reports decisions per second, latency percentiles, errors and, given the
// server's pid, the CPU time the server used per decision (read from /proc, not estimated).
//
//	go run ./test/loadgen -addr 127.0.0.1:8081 -domain bench -keys fw -descriptors 1 \
//	    -concurrency 32 -duration 10s -pid $(pgrep ratelimitd)
//
// Requests can mix keys and sizes: -keys fw,tb:10 cycles descriptors over the keys fw (with
// -values distinct values) and tb (10 values); -descriptors 1,3 alternates requests of 1 and 3
// descriptors. A small value space against a low limit (-keys over:4 with the bench
// configuration's 10/s key "over") is the over-the-limit scenario; many values against a high
// limit (-keys fw -values 1000) the under-the-limit one. With -redis-info (the Redis servers
// the service uses), it also reports how many EVALSHA (and EVAL) those servers ran per limited
// descriptor decided, from the difference of INFO commandstats before and after the run.
//
// It only targets the address it is given (loopback in this repo's scripts) and stops by
// itself after -duration.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// report is one run's figures; -json prints it as one line.
type report struct {
	Label          string  `json:"label"`
	Decisions      int64   `json:"decisions"`
	Errors         int64   `json:"errors"`
	OverLimit      int64   `json:"over_limit"`
	Seconds        float64 `json:"seconds"`
	PerSecond      float64 `json:"per_second"`
	P50us          float64 `json:"p50_us"`
	P90us          float64 `json:"p90_us"`
	P99us          float64 `json:"p99_us"`
	ServerCPUus    float64 `json:"server_cpu_us_per_decision,omitempty"`
	ServerCPUTotal float64 `json:"server_cpu_seconds,omitempty"`
	// Limited counts the descriptors answered with a current limit; LimitedOver those of them
	// answered OVER_LIMIT.
	Limited     int64 `json:"limited_descriptors"`
	LimitedOver int64 `json:"limited_over_limit"`
	// StoreCPUus is the CPU time of the -store-pid processes per decision.
	StoreCPUus float64 `json:"store_cpu_us_per_decision,omitempty"`
	// EvalSHA and Eval are the script calls the -redis-info servers ran during the run;
	// EvalSHAPerLimited is EvalSHA / Limited.
	EvalSHA           int64   `json:"evalsha"`
	Eval              int64   `json:"eval"`
	EvalSHAPerLimited float64 `json:"evalsha_per_limited"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "gRPC address of ratelimitd")
	domain := flag.String("domain", "bench", "domain of every request")
	keys := flag.String("keys", "fw", "comma-separated descriptor keys, each key or key:N (N distinct values for it); descriptor i uses key i mod len")
	ndesc := flag.String("descriptors", "1", "descriptors per request, or a comma-separated rotation of sizes (1,3: alternately 1 and 3)")
	nvalues := flag.Int("values", 1000, "distinct values per key without :N (spread over counters)")
	storePids := flag.String("store-pid", "", "comma-separated pids of store processes (redis-server) whose CPU time to measure")
	redisInfo := flag.String("redis-info", "", "comma-separated host:port of the Redis servers the service uses, to count their EVALSHA calls (INFO commandstats)")
	conc := flag.Int("concurrency", 32, "requests in flight")
	dur := flag.Duration("duration", 5*time.Second, "how long to run (at most 10m)")
	pid := flag.Int("pid", 0, "server pid whose CPU time to measure (0: none)")
	label := flag.String("label", "", "label printed with the figures")
	asJSON := flag.Bool("json", false, "print one JSON line instead of text")
	fixed := flag.String("serve-fixed", "", "instead of generating load, serve a baseline on this address: a gRPC server answering every ShouldRateLimit with a fixed OK, until SIGINT/SIGTERM")
	flag.Parse()
	if *fixed != "" {
		if err := serveFixed(*fixed); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		return
	}
	m, err := parseMix(*keys, *ndesc, *nvalues)
	if err == nil && (*dur > 10*time.Minute || *dur <= 0 || *conc <= 0) {
		err = fmt.Errorf("-duration must be in (0, 10m]; -concurrency positive")
	}
	var pids []int
	for _, p := range splitList(*storePids) {
		n, e := strconv.Atoi(p)
		if e != nil || n <= 0 {
			err = fmt.Errorf("-store-pid: %q is not a pid", p)
		}
		pids = append(pids, n)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	r, err := run(*addr, *domain, m, *conc, *dur, *pid, pids, splitList(*redisInfo))
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	r.Label = *label
	if *asJSON {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		return
	}
	fmt.Printf("%s: %.0f decisions/s, p50 %.0fus p90 %.0fus p99 %.0fus, %d errors, %d over limit", r.Label, r.PerSecond, r.P50us, r.P90us, r.P99us, r.Errors, r.OverLimit)
	if r.ServerCPUus > 0 {
		fmt.Printf(", server CPU %.1fus/decision", r.ServerCPUus)
	}
	if r.StoreCPUus > 0 {
		fmt.Printf(", store CPU %.1fus/decision", r.StoreCPUus)
	}
	fmt.Printf(", %d limited descriptors (%d over limit)", r.Limited, r.LimitedOver)
	if *redisInfo != "" {
		fmt.Printf(", %.3f EVALSHA per limited descriptor (%d EVALSHA, %d EVAL)", r.EvalSHAPerLimited, r.EvalSHA, r.Eval)
	}
	fmt.Println()
}

// mix says what requests to send: descriptor i of a request uses keys[i mod len(keys)] with
// values[i mod len] distinct values; request j has sizes[j mod len(sizes)] descriptors.
type mix struct {
	keys   []string
	values []int
	sizes  []int
}

func parseMix(keys, sizes string, nvalues int) (mix, error) {
	var m mix
	if nvalues <= 0 {
		return m, fmt.Errorf("-values must be positive")
	}
	for _, k := range splitList(keys) {
		n := nvalues
		if name, count, ok := strings.Cut(k, ":"); ok {
			v, err := strconv.Atoi(count)
			if err != nil || v <= 0 || name == "" {
				return m, fmt.Errorf("-keys: %q: want key or key:N with N positive", k)
			}
			k, n = name, v
		}
		m.keys = append(m.keys, k)
		m.values = append(m.values, n)
	}
	for _, s := range splitList(sizes) {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 64 {
			return m, fmt.Errorf("-descriptors: %q: want sizes in [1, 64]", s)
		}
		m.sizes = append(m.sizes, n)
	}
	if len(m.keys) == 0 || len(m.sizes) == 0 {
		return m, fmt.Errorf("-keys and -descriptors must not be empty")
	}
	return m, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(addr, domain string, m mix, conc int, dur time.Duration, pid int, storePids []int, redisAddrs []string) (report, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return report{}, err
	}
	defer cc.Close()
	client := rlsv3.NewRateLimitServiceClient(cc)
	// Warm up the connection and the scripts.
	warm, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = client.ShouldRateLimit(warm, build(domain, m, 0))
	cancel()
	if err != nil {
		return report{}, fmt.Errorf("first request: %w", err)
	}

	rc := newScriptCounter(redisAddrs)
	defer rc.close()
	sha0, eval0, err := rc.calls()
	if err != nil {
		return report{}, err
	}
	store0, err := cpuSecondsAll(storePids)
	if err != nil {
		return report{}, err
	}
	cpu0, err := cpuSeconds(pid)
	if err != nil {
		return report{}, err
	}
	ctx, stop := context.WithTimeout(context.Background(), dur)
	defer stop()
	var decisions, errs, over, limited, limitedOver atomic.Int64
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Go(func() {
			seq := w
			for ctx.Err() == nil {
				req := build(domain, m, seq)
				seq += conc
				t0 := time.Now()
				callCtx, cancel := context.WithTimeout(context.Background(), time.Second)
				resp, err := client.ShouldRateLimit(callCtx, req)
				cancel()
				if ctx.Err() != nil && err != nil {
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				if err != nil {
					errs.Add(1)
					continue
				}
				decisions.Add(1)
				if resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
					over.Add(1)
				}
				var l, lo int64
				for _, st := range resp.GetStatuses() {
					if st.GetCurrentLimit() != nil {
						l++
						if st.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
							lo++
						}
					}
				}
				limited.Add(l)
				limitedOver.Add(lo)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu1, err := cpuSeconds(pid)
	if err != nil {
		return report{}, err
	}
	store1, err := cpuSecondsAll(storePids)
	if err != nil {
		return report{}, err
	}
	sha1, eval1, err := rc.calls()
	if err != nil {
		return report{}, err
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds())
	}
	r := report{
		Decisions: decisions.Load(), Errors: errs.Load(), OverLimit: over.Load(), Seconds: elapsed,
		PerSecond: float64(decisions.Load()) / elapsed, P50us: pct(.5), P90us: pct(.9), P99us: pct(.99),
		Limited: limited.Load(), LimitedOver: limitedOver.Load(), EvalSHA: sha1 - sha0, Eval: eval1 - eval0,
	}
	if pid > 0 && r.Decisions > 0 {
		r.ServerCPUTotal = cpu1 - cpu0
		r.ServerCPUus = (cpu1 - cpu0) / float64(r.Decisions) * 1e6
	}
	if len(storePids) > 0 && r.Decisions > 0 {
		r.StoreCPUus = (store1 - store0) / float64(r.Decisions) * 1e6
	}
	if r.Limited > 0 {
		r.EvalSHAPerLimited = float64(r.EvalSHA) / float64(r.Limited)
	}
	return r, nil
}

// scriptCounter reads the EVALSHA and EVAL call counts of a set of Redis servers.
type scriptCounter struct{ clients []*redis.Client }

func newScriptCounter(addrs []string) *scriptCounter {
	c := &scriptCounter{}
	for _, a := range addrs {
		c.clients = append(c.clients, redis.NewClient(&redis.Options{Addr: a}))
	}
	return c
}

var cmdstat = regexp.MustCompile(`(?m)^cmdstat_(evalsha|eval):calls=(\d+)`)

// calls sums the EVALSHA and EVAL calls of every server since it started.
func (c *scriptCounter) calls() (evalsha, eval int64, err error) {
	for _, cl := range c.clients {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := cl.Info(ctx, "commandstats").Result()
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("INFO commandstats on %s: %w", cl.Options().Addr, err)
		}
		for _, m := range cmdstat.FindAllStringSubmatch(info, -1) {
			n, _ := strconv.ParseInt(m[2], 10, 64)
			if m[1] == "evalsha" {
				evalsha += n
			} else {
				eval += n
			}
		}
	}
	return evalsha, eval, nil
}

func (c *scriptCounter) close() {
	for _, cl := range c.clients {
		_ = cl.Close()
	}
}

// fixedServer answers every request with the same OK response: the transport's floor.
type fixedServer struct {
	rlsv3.UnimplementedRateLimitServiceServer
	resp *rlsv3.RateLimitResponse
}

func (f *fixedServer) ShouldRateLimit(context.Context, *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	return f.resp, nil
}

// serveFixed serves the fixed-response baseline on addr until SIGINT or SIGTERM.
func serveFixed(addr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(g, &fixedServer{resp: &rlsv3.RateLimitResponse{
		OverallCode: rlsv3.RateLimitResponse_OK,
		Statuses:    []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: rlsv3.RateLimitResponse_OK}},
	}})
	go func() {
		<-ctx.Done()
		g.GracefulStop()
	}()
	return g.Serve(lis)
}

// build makes the seq-th request: its size from the rotation of sizes, descriptors cycling
// through the keys, each key's values spread over its number of counters.
func build(domain string, m mix, seq int) *rlsv3.RateLimitRequest {
	n := m.sizes[seq%len(m.sizes)]
	req := &rlsv3.RateLimitRequest{Domain: domain, Descriptors: make([]*ratelimitv3.RateLimitDescriptor, n)}
	for i := range n {
		k := i % len(m.keys)
		v := strconv.Itoa((seq*7 + i) % m.values[k])
		req.Descriptors[i] = &ratelimitv3.RateLimitDescriptor{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: m.keys[k], Value: v}},
		}
	}
	return req
}

// cpuSecondsAll sums cpuSeconds over pids.
func cpuSecondsAll(pids []int) (float64, error) {
	var sum float64
	for _, p := range pids {
		s, err := cpuSeconds(p)
		if err != nil {
			return 0, err
		}
		sum += s
	}
	return sum, nil
}

// cpuSeconds reads the user+system CPU time of pid from /proc/<pid>/stat; 0 when pid is 0.
func cpuSeconds(pid int) (float64, error) {
	if pid <= 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read server cpu: %w", err)
	}
	// Fields after the command name (which may contain spaces) start after the last ')'.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	const clockTicks = 100 // USER_HZ on Linux
	return (utime + stime) / clockTicks, nil
}
