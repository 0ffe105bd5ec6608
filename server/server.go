// Package server answers rate-limit requests: Envoy's RateLimitService (v3) over gRPC, the same
// requests as JSON over HTTP, health and metrics. It matches each descriptor against the
// current rules, runs the algorithms, grades the results and assembles Envoy's response.
package server

import (
	"context"
	"sync/atomic"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// Pinger reports whether the store answers; readiness uses it.
type Pinger interface {
	Ping(ctx context.Context) error
}

// Options wire a Server. Decider is required; everything else has a default.
type Options struct {
	// Decider runs the algorithms on the store.
	Decider algorithms.Decider
	// Storage answers readiness probes; nil means the store is always ready.
	Storage Pinger
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// Registerer receives the server's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; nil serves an empty page.
	Gatherer prometheus.Gatherer
	// KeyPrefix starts every storage key; default "ratelimitd:".
	KeyPrefix string
	// StorageTimeout bounds a storage call when the caller set no deadline; default 1s.
	StorageTimeout time.Duration
	// DeadlineMargin is kept back from the caller's deadline so that a slow store is answered
	// with UNAVAILABLE before the caller gives up; default 5ms.
	DeadlineMargin time.Duration
	// Headers chooses the optional response headers.
	Headers HeaderOptions
	// Replicas is the number of replicas sharing the store: failure_mode local divides a
	// rule's rate by it. Default 1.
	Replicas int
	// Local is the in-process decider of failure_mode local (a memory store of its own); nil
	// makes local answer like error.
	Local algorithms.Decider
	// Overload tunes the adaptive limit on in-flight decisions (UnaryInterceptor).
	Overload OverloadOptions
}

// HeaderOptions chooses the headers added to Envoy's responses.
type HeaderOptions struct {
	// XRateLimit adds X-RateLimit-Limit, -Remaining and -Reset of the most restrictive limit.
	XRateLimit bool
	// NearLimitName and NearLimitValue form the request header added for the upstream when a
	// request is admitted near its limit; defaults "x-ratelimit-grade" and "near-limit".
	// NearLimitName "-" disables it.
	NearLimitName  string
	NearLimitValue string
}

// Server is the rate-limit service. It is safe for concurrent use; rules are swapped
// atomically by SetRules while requests are in flight.
type Server struct {
	rlsv3.UnimplementedRateLimitServiceServer

	decider        algorithms.Decider
	storage        Pinger
	log            *zap.Logger
	metrics        *metrics
	gatherer       prometheus.Gatherer
	prefix         string
	storageTimeout time.Duration
	margin         time.Duration
	headers        HeaderOptions
	rules          atomic.Pointer[rules]
	replicas       int
	local          algorithms.Decider
	overload       *overload
}

// rules is one immutable snapshot of the configuration.
type rules struct {
	set     *config.Set
	domains map[string]bool
}

// New returns a Server with no rules: it answers UNAVAILABLE until SetRules is called.
func New(opts Options) *Server {
	s := &Server{
		decider:        opts.Decider,
		storage:        opts.Storage,
		log:            opts.Logger,
		gatherer:       opts.Gatherer,
		prefix:         opts.KeyPrefix,
		storageTimeout: opts.StorageTimeout,
		margin:         opts.DeadlineMargin,
		headers:        opts.Headers,
		replicas:       opts.Replicas,
		local:          opts.Local,
	}
	if s.replicas <= 0 {
		s.replicas = 1
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.prefix == "" {
		s.prefix = "ratelimitd:"
	}
	if s.storageTimeout <= 0 {
		s.storageTimeout = time.Second
	}
	if s.margin <= 0 {
		s.margin = 5 * time.Millisecond
	}
	if s.headers.NearLimitName == "" {
		s.headers.NearLimitName = "x-ratelimit-grade"
	}
	if s.headers.NearLimitValue == "" {
		s.headers.NearLimitValue = "near-limit"
	}
	s.metrics = newMetrics(opts.Registerer)
	s.overload = newOverload(opts.Overload, opts.Registerer)
	return s
}

// Register registers the Envoy rate-limit service and the native API (ratelimitd.v1) on g.
func (s *Server) Register(g *grpc.Server) {
	rlsv3.RegisterRateLimitServiceServer(g, s)
	ratelimitdv1.RegisterRateLimiterServer(g, &native{s: s})
}

// SetRules puts a new configuration in force for every request that starts after it returns.
func (s *Server) SetRules(set *config.Set) {
	r := &rules{set: set, domains: make(map[string]bool)}
	for _, d := range set.Domains() {
		r.domains[d] = true
	}
	s.rules.Store(r)
	s.metrics.rules.Set(float64(set.RuleCount()))
}

// ReloadFailed counts a configuration that could not be put in force.
func (s *Server) ReloadFailed() { s.metrics.reloads.WithLabelValues("error").Inc() }

// Reloaded counts a configuration put in force by a reload.
func (s *Server) Reloaded() { s.metrics.reloads.WithLabelValues("ok").Inc() }

// Ready reports nil once rules are loaded and the store answers.
func (s *Server) Ready(ctx context.Context) error {
	if s.rules.Load() == nil {
		return errNoRules
	}
	if s.storage == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.storageTimeout)
	defer cancel()
	return s.storage.Ping(ctx)
}
