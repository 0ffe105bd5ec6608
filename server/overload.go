package server

import (
	"context"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Overload defaults.
const (
	DefaultOverloadInitialLimit = 200
	DefaultOverloadMinLimit     = 50
	DefaultOverloadMaxLimit     = 5000
	// DefaultOverloadTolerance is how many times its observed minimum the latency may reach
	// before the limit shrinks.
	DefaultOverloadTolerance = 2.0
	// DefaultOverloadLowShare is the part of the limit low-priority requests may fill.
	DefaultOverloadLowShare = 0.5
	// DefaultOverloadRetryAfter is the retry hint of a shed request.
	DefaultOverloadRetryAfter = 100 * time.Millisecond
	// overloadSmoothing is the weight of a new estimate of the limit.
	overloadSmoothing = 0.2
	// overloadMinWindow is the length, in samples, of the windows the observed minimum latency
	// is taken over: the minimum of the current and the previous window, so a lasting change
	// of the store's latency is learnt within two windows while a single window never forgets
	// it at once.
	overloadMinWindow = 1000
)

// OverloadOptions tune the adaptive limit on in-flight decisions. The zero value takes every
// default.
type OverloadOptions struct {
	// Disabled turns the limit off: every request is admitted.
	Disabled bool
	// InitialLimit, MinLimit and MaxLimit bound the limit on in-flight decisions; MinLimit =
	// MaxLimit fixes it.
	InitialLimit, MinLimit, MaxLimit int
	// Tolerance: the limit grows while latency stays within Tolerance times its observed
	// minimum, and shrinks (by up to half per sample) as it climbs above.
	Tolerance float64
	// LowShare is the part of the limit (0 to 1) that requests of a low priority may fill:
	// they are shed first.
	LowShare float64
	// LowPriorities are the native API priority values shed first; Envoy's requests, and
	// native ones naming another priority or none, have the default priority.
	LowPriorities []string
	// RetryAfter is the retry hint of a shed request.
	RetryAfter time.Duration
	// Now is the clock measuring latencies; time.Now when nil.
	Now func() time.Time
}

// overload keeps the number of decisions in flight under an adaptive limit, in the style of
// Netflix's concurrency-limits gradient: after each decision the limit moves towards
// limit*gradient, where gradient = Tolerance*minRTT/rtt clamped to [0.5, 1], plus sqrt(limit)
// when the gradient is 1. So while latency stays within Tolerance of its observed minimum the
// limit grows by about sqrt(limit) (but only while more than half of it is used, so an idle
// service does not inflate it), and as latency climbs beyond that it shrinks. Beyond the limit a request is refused at once
// (RESOURCE_EXHAUSTED with a retry hint) instead of queueing; low-priority requests are
// refused as soon as the in-flight count reaches LowShare of the limit.
//
// It is safe for concurrent use.
type overload struct {
	opts OverloadOptions
	low  map[string]bool

	mu       sync.Mutex
	limit    float64
	inflight int
	minRTT   time.Duration // min(prevMin, curMin)
	prevMin  time.Duration // minimum of the previous window; 0 before the first ends
	curMin   time.Duration // minimum of the current window
	samples  int           // in the current window

	shed *prometheus.CounterVec
}

func newOverload(o OverloadOptions, reg prometheus.Registerer) *overload {
	if o.MinLimit <= 0 {
		o.MinLimit = DefaultOverloadMinLimit
	}
	if o.MaxLimit <= 0 {
		o.MaxLimit = max(DefaultOverloadMaxLimit, o.MinLimit)
	}
	o.MinLimit = min(o.MinLimit, o.MaxLimit)
	if o.InitialLimit <= 0 {
		o.InitialLimit = DefaultOverloadInitialLimit
	}
	o.InitialLimit = min(max(o.InitialLimit, o.MinLimit), o.MaxLimit)
	if o.Tolerance < 1 {
		o.Tolerance = DefaultOverloadTolerance
	}
	if o.LowShare <= 0 || o.LowShare > 1 {
		o.LowShare = DefaultOverloadLowShare
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = DefaultOverloadRetryAfter
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &overload{opts: o, low: map[string]bool{}, limit: float64(o.InitialLimit)}
	for _, p := range o.LowPriorities {
		l.low[p] = true
	}
	l.shed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ratelimitd_overload_shed_total",
		Help: "Requests refused with RESOURCE_EXHAUSTED because the in-flight limit was reached, by priority (low or default).",
	}, []string{"priority"})
	l.shed.WithLabelValues("low")
	l.shed.WithLabelValues("default")
	if reg != nil {
		reg.MustRegister(l.shed,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "ratelimitd_overload_limit",
				Help: "Current adaptive limit on in-flight decisions (0 when disabled).",
			}, func() float64 { return float64(l.Limit()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "ratelimitd_overload_inflight",
				Help: "Decisions in flight.",
			}, func() float64 { return float64(l.InFlight()) }),
		)
	}
	return l
}

// Limit returns the current limit, 0 when disabled.
func (l *overload) Limit() int {
	if l.opts.Disabled {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.limit)
}

// InFlight returns the number of admitted decisions not yet done.
func (l *overload) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight
}

// acquire admits a request of the given priority when the in-flight count is below its
// threshold; an admitted request must call release once done.
func (l *overload) acquire(low bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	threshold := int(l.limit)
	if low {
		threshold = max(int(l.limit*l.opts.LowShare), 1)
	}
	if !l.opts.Disabled && l.inflight >= threshold {
		return false
	}
	l.inflight++
	return true
}

// release ends an admitted request that took rtt, and moves the limit.
func (l *overload) release(rtt time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	inflight := l.inflight
	l.inflight--
	if l.opts.Disabled || rtt <= 0 {
		return
	}
	if l.samples == overloadMinWindow {
		l.prevMin, l.curMin, l.samples = l.curMin, 0, 0
	}
	l.samples++
	if l.curMin == 0 || rtt < l.curMin {
		l.curMin = rtt
	}
	l.minRTT = l.curMin
	if l.prevMin > 0 && l.prevMin < l.minRTT {
		l.minRTT = l.prevMin
	}
	gradient := math.Max(0.5, math.Min(1, l.opts.Tolerance*float64(l.minRTT)/float64(rtt)))
	if gradient == 1 && float64(inflight) < l.limit/2 {
		return // not using the limit: no evidence that more would do
	}
	next := l.limit * gradient
	if gradient == 1 {
		next += math.Sqrt(l.limit) // room to grow only while latency stays near its minimum
	}
	next = l.limit*(1-overloadSmoothing) + next*overloadSmoothing
	l.limit = math.Min(math.Max(next, float64(l.opts.MinLimit)), float64(l.opts.MaxLimit))
}

// prioritized is a request that names its priority (the native API's Check and Acquire).
type prioritized interface{ GetPriority() string }

// guarded reports whether the in-flight limit applies to a method: the decisions of both
// APIs. Release is never shed, since it frees capacity; health and reflection are not
// decisions.
func guarded(method string) bool {
	switch {
	case strings.HasPrefix(method, "/envoy.service.ratelimit."):
		return true
	case strings.HasPrefix(method, "/ratelimitd.v1."):
		return !strings.HasSuffix(method, "/Release")
	}
	return false
}

// UnaryInterceptor returns the gRPC interceptor that protects the service with the adaptive
// in-flight limit (see OverloadOptions): a request beyond it is refused with
// RESOURCE_EXHAUSTED carrying google.rpc.RetryInfo and the grpc-retry-pushback-ms trailer.
func (s *Server) UnaryInterceptor() grpc.UnaryServerInterceptor {
	l := s.overload
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if l.opts.Disabled || !guarded(info.FullMethod) {
			return handler(ctx, req)
		}
		low := false
		if p, ok := req.(prioritized); ok {
			low = l.low[p.GetPriority()]
		}
		if !l.acquire(low) {
			label := "default"
			if low {
				label = "low"
			}
			l.shed.WithLabelValues(label).Inc()
			return nil, l.refusal(ctx)
		}
		start := l.opts.Now()
		defer func() { l.release(l.opts.Now().Sub(start)) }()
		return handler(ctx, req)
	}
}

// refusal is the error of a shed request; it sets the pushback trailer on ctx's stream.
func (l *overload) refusal(ctx context.Context) error {
	ms := l.opts.RetryAfter.Milliseconds()
	_ = grpc.SetTrailer(ctx, grpcmd.Pairs("grpc-retry-pushback-ms", strconv.FormatInt(ms, 10)))
	st := status.New(codes.ResourceExhausted, "overloaded: too many decisions in flight, retry later")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(l.opts.RetryAfter)}); err == nil {
		st = d
	}
	return st.Err()
}
