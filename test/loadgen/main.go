// Command loadgen drives ratelimitd's ShouldRateLimit over real gRPC at a fixed concurrency for
// a fixed time and reports decisions per second, latency percentiles, errors and, given the
// server's pid, the CPU time the server used per decision (read from /proc, not estimated).
//
//	go run ./test/loadgen -addr 127.0.0.1:8081 -domain bench -keys fw -descriptors 1 \
//	    -concurrency 32 -duration 10s -pid $(pgrep ratelimitd)
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
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
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "gRPC address of ratelimitd")
	domain := flag.String("domain", "bench", "domain of every request")
	keys := flag.String("keys", "fw", "comma-separated descriptor keys; descriptor i uses key i mod len")
	ndesc := flag.Int("descriptors", 1, "descriptors per request")
	nvalues := flag.Int("values", 1000, "distinct values per key (spread over counters)")
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
	if *dur > 10*time.Minute || *dur <= 0 || *conc <= 0 || *ndesc <= 0 || *nvalues <= 0 {
		fmt.Fprintln(os.Stderr, "loadgen: -duration must be in (0, 10m]; -concurrency, -descriptors, -values positive")
		os.Exit(2)
	}
	r, err := run(*addr, *domain, strings.Split(*keys, ","), *ndesc, *nvalues, *conc, *dur, *pid)
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
	fmt.Println()
}

func run(addr, domain string, keys []string, ndesc, nvalues, conc int, dur time.Duration, pid int) (report, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return report{}, err
	}
	defer cc.Close()
	client := rlsv3.NewRateLimitServiceClient(cc)
	// Warm up the connection and the scripts.
	warm, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = client.ShouldRateLimit(warm, build(domain, keys, ndesc, nvalues, 0))
	cancel()
	if err != nil {
		return report{}, fmt.Errorf("first request: %w", err)
	}

	cpu0, err := cpuSeconds(pid)
	if err != nil {
		return report{}, err
	}
	ctx, stop := context.WithTimeout(context.Background(), dur)
	defer stop()
	var decisions, errs, over atomic.Int64
	lat := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Go(func() {
			seq := w
			for ctx.Err() == nil {
				req := build(domain, keys, ndesc, nvalues, seq)
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
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	cpu1, err := cpuSeconds(pid)
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
	}
	if pid > 0 && r.Decisions > 0 {
		r.ServerCPUTotal = cpu1 - cpu0
		r.ServerCPUus = (cpu1 - cpu0) / float64(r.Decisions) * 1e6
	}
	return r, nil
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

// build makes the seq-th request: ndesc descriptors cycling through keys, values spread over
// nvalues counters.
func build(domain string, keys []string, ndesc, nvalues, seq int) *rlsv3.RateLimitRequest {
	req := &rlsv3.RateLimitRequest{Domain: domain}
	for i := 0; i < ndesc; i++ {
		v := strconv.Itoa((seq*7 + i) % nvalues)
		req.Descriptors = append(req.Descriptors, &ratelimitv3.RateLimitDescriptor{
			Entries: []*ratelimitv3.RateLimitDescriptor_Entry{{Key: keys[i%len(keys)], Value: v}},
		})
	}
	return req
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
