package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
	"github.com/ratelimitd/ratelimitd/server"
	"github.com/ratelimitd/ratelimitd/storage"
)

// serveFlags are the settings of `ratelimitd serve`.
type serveFlags struct {
	configDir       string
	grpcAddr        string
	httpAddr        string
	redis           redisFlags
	keyPrefix       string
	storageTimeout  time.Duration
	deadlineMargin  time.Duration
	xRateLimit      bool
	nearLimitHeader string
	logLevel        string
	shutdownTimeout time.Duration
	overLimitCache  int // -overlimit-cache-size
	replicas        int
	overload        bool
	overloadInit    int
	overloadMin     int
	overloadMax     int
	overloadLow     string
	overloadRetry   time.Duration
	breakerFailures int
	breakerMinSkip  time.Duration
	breakerMaxSkip  time.Duration
	// known lists the environment variables of serve's flags.
	known map[string]bool
}

func parseServeFlags(args []string, stderr io.Writer) (serveFlags, error) {
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = flagUsage(fs, "ratelimitd serve -config DIR [flags]")
	fs.StringVar(&f.configDir, "config", "", "directory of descriptor YAML files (required); reloaded when it changes")
	fs.StringVar(&f.grpcAddr, "grpc-addr", "127.0.0.1:8081", "gRPC listen address (Envoy rate-limit API, health, reflection)")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address (/json, /healthz, /readyz, /metrics)")
	f.redis.register(fs)
	fs.StringVar(&f.keyPrefix, "key-prefix", "ratelimitd:", "prefix of every storage key")
	durationFlag(fs, &f.storageTimeout, "storage-timeout", time.Second, "bound of a storage call when the caller sets no deadline")
	durationFlag(fs, &f.deadlineMargin, "deadline-margin", 5*time.Millisecond, "time kept back from the caller's deadline to answer UNAVAILABLE before it expires")
	boolFlag(fs, &f.xRateLimit, "x-ratelimit-headers", false, "also add X-RateLimit-Limit, -Remaining and -Reset to responses")
	fs.StringVar(&f.nearLimitHeader, "near-limit-header", "x-ratelimit-grade: near-limit", `request header added for the upstream when a request is admitted near its limit ("name: value", or "-" for none)`)
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	durationFlag(fs, &f.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight requests may finish on SIGINT/SIGTERM")
	fs.IntVar(&f.overLimitCache, "overlimit-cache-size", 0, "number of over-limit keys remembered in the process, refused without a storage call until their retry-after ends (0: off)")
	fs.IntVar(&f.replicas, "replicas", 1, "number of ratelimitd replicas sharing the store: failure_mode local divides each rule's rate by it")
	boolFlag(fs, &f.overload, "overload", true, "shed requests beyond an adaptive limit on in-flight decisions with RESOURCE_EXHAUSTED and a retry hint")
	fs.IntVar(&f.overloadInit, "overload-initial-limit", server.DefaultOverloadInitialLimit, "in-flight limit at start")
	fs.IntVar(&f.overloadMin, "overload-min-limit", server.DefaultOverloadMinLimit, "lowest in-flight limit (equal to -overload-max-limit: a fixed limit)")
	fs.IntVar(&f.overloadMax, "overload-max-limit", server.DefaultOverloadMaxLimit, "highest in-flight limit")
	fs.StringVar(&f.overloadLow, "overload-low-priority", "sheddable", "comma-separated native API priority values shed first (refused from half the in-flight limit)")
	durationFlag(fs, &f.overloadRetry, "overload-retry-after", server.DefaultOverloadRetryAfter, "retry hint of a request shed for overload")
	fs.IntVar(&f.breakerFailures, "redis-breaker-failures", storage.DefaultBreakerFailures, "consecutive failures after which a Redis server is skipped for a while (0: never skip)")
	durationFlag(fs, &f.breakerMinSkip, "redis-breaker-min-skip", storage.DefaultBreakerMinSkip, "first skip interval of a failing Redis server; doubles while its probes fail")
	durationFlag(fs, &f.breakerMaxSkip, "redis-breaker-max-skip", storage.DefaultBreakerMaxSkip, "longest skip interval of a failing Redis server")
	if err := parseWithEnv(fs, args, os.LookupEnv); err != nil {
		return f, err
	}
	f.known = map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) { f.known[envName(fl.Name)] = true })
	if name, _ := splitHeader(f.nearLimitHeader); name != "-" && !validHeaderName(name) {
		return f, fmt.Errorf("-near-limit-header: %q is not a lower-case HTTP header name (want \"name: value\" or \"-\")", name)
	}
	switch {
	case fs.NArg() > 0:
		return f, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case f.configDir == "":
		return f, errors.New("-config: a configuration directory is required (or RATELIMITD_CONFIG)")
	case f.storageTimeout <= 0:
		return f, errors.New("-storage-timeout: must be positive")
	case f.deadlineMargin < 0:
		return f, errors.New("-deadline-margin: must not be negative")
	case f.overLimitCache < 0:
		return f, errors.New("-overlimit-cache-size: must not be negative (0 turns the cache off)")
	case f.replicas < 1:
		return f, errors.New("-replicas: must be at least 1")
	case f.overloadInit < 1 || f.overloadMin < 1 || f.overloadMax < 1:
		return f, errors.New("-overload-initial-limit, -overload-min-limit, -overload-max-limit: must be at least 1")
	case f.overloadMin > f.overloadMax:
		return f, fmt.Errorf("-overload-min-limit: %d is above -overload-max-limit %d", f.overloadMin, f.overloadMax)
	case f.overloadRetry <= 0:
		return f, errors.New("-overload-retry-after: must be positive")
	case f.breakerFailures < 0:
		return f, errors.New("-redis-breaker-failures: must not be negative (0 turns the breaker off)")
	case f.breakerMinSkip <= 0 || f.breakerMaxSkip < f.breakerMinSkip:
		return f, errors.New("-redis-breaker-min-skip, -redis-breaker-max-skip: want 0 < min <= max")
	}
	if err := f.redis.check(); err != nil {
		return f, err
	}
	return f, nil
}

// serve runs the service until ctx ends, then stops gracefully. It returns the exit code.
func serve(ctx context.Context, args []string, stderr io.Writer) int {
	f, err := parseServeFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "ratelimitd serve: %v\n", err)
		}
		return 2
	}
	log, err := newLogger(f.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "ratelimitd serve: -log-level: %v\n", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	// go-redis logs through a process-wide logger; route it into ours, at debug level: every
	// failure it reports also reaches us as an error that we count and log.
	redis.SetLogger(redisLogger{log.Named("redis").Sugar()})
	for _, name := range unknownEnv(os.Environ(), f.known) {
		log.Warn("ignoring an environment variable that sets no flag of serve", zap.String("name", name))
	}
	if err := runServer(ctx, f, log); err != nil {
		log.Error("ratelimitd stopped", zap.Error(err))
		return 1
	}
	return 0
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.DisableStacktrace = true
	return cfg.Build()
}

// runServer wires config, storage, algorithms and the server, serves until ctx ends, and
// stops everything it started before returning.
func runServer(ctx context.Context, f serveFlags, log *zap.Logger) error {
	set, err := config.Load(f.configDir)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	breaker := newBreaker(f, reg, log)
	decider, pinger, closeStore, err := openStore(ctx, f.redis, breaker, log)
	if err != nil {
		return err
	}
	defer closeStore()

	if f.overLimitCache > 0 {
		decider = withOverLimitCache(decider, f.overLimitCache, reg, log)
	}
	headers := server.HeaderOptions{XRateLimit: f.xRateLimit}
	headers.NearLimitName, headers.NearLimitValue = splitHeader(f.nearLimitHeader)
	srv := server.New(server.Options{
		Decider:        decider,
		Storage:        pinger,
		Logger:         log,
		Registerer:     reg,
		Gatherer:       reg,
		KeyPrefix:      f.keyPrefix,
		StorageTimeout: f.storageTimeout,
		DeadlineMargin: f.deadlineMargin,
		Headers:        headers,
		Replicas:       f.replicas,
		Local:          algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{})),
		Overload: server.OverloadOptions{
			Disabled:      !f.overload,
			InitialLimit:  f.overloadInit,
			MinLimit:      f.overloadMin,
			MaxLimit:      f.overloadMax,
			LowPriorities: splitList(f.overloadLow),
			RetryAfter:    f.overloadRetry,
		},
	})
	srv.SetRules(set)
	log.Info("configuration loaded", zap.String("dir", f.configDir), zap.Strings("domains", set.Domains()), zap.Int("rules", set.RuleCount()))
	warnIfEmpty(set, f.configDir, log)

	var lc net.ListenConfig
	grpcLis, err := lc.Listen(ctx, "tcp", f.grpcAddr)
	if err != nil {
		return fmt.Errorf("listen -grpc-addr: %w", err)
	}
	httpLis, err := lc.Listen(ctx, "tcp", f.httpAddr)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("listen -http-addr: %w", err)
	}

	g := grpc.NewServer(grpc.ChainUnaryInterceptor(srv.UnaryInterceptor()))
	srv.Register(g)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	h := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := g.Serve(grpcLis); err != nil {
			errc <- fmt.Errorf("grpc: %w", err)
		}
	})
	wg.Go(func() {
		if err := h.Serve(httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	})
	wg.Go(func() { watchConfig(ctx, f.configDir, set.Digest(), srv, log) })
	wg.Go(func() { trackHealth(ctx, srv, hs) })
	log.Info("serving", zap.String("grpc", grpcLis.Addr().String()), zap.String("http", httpLis.Addr().String()))

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
	}
	cancel()
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(stopped)
	}()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancelShutdown()
	select {
	case <-stopped:
	case <-shutdownCtx.Done():
		g.Stop()
		<-stopped
	}
	if err := h.Shutdown(shutdownCtx); err != nil {
		h.Close()
	}
	wg.Wait()
	return runErr
}

// newBreaker builds the Redis breaker the flags ask for (nil when off) and registers its
// metrics on reg.
func newBreaker(f serveFlags, reg prometheus.Registerer, log *zap.Logger) *storage.Breaker {
	if f.breakerFailures == 0 {
		return nil
	}
	blog := log.Named("redis")
	b := storage.NewBreaker(storage.BreakerOptions{
		Failures: f.breakerFailures,
		MinSkip:  f.breakerMinSkip,
		MaxSkip:  f.breakerMaxSkip,
		OnChange: func(addr string, skip time.Duration, err error) {
			if err != nil {
				blog.Warn("redis server keeps failing; calls to it fail fast until a probe succeeds", zap.String("server", addr), zap.Duration("next_probe_in", skip), zap.Error(err))
				return
			}
			blog.Info("redis server answers again; calls to it resume", zap.String("server", addr))
		},
	})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ratelimitd_redis_breaker_open",
			Help: "Redis servers currently skipped after consecutive failures.",
		}, func() float64 { return float64(b.Open()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ratelimitd_redis_breaker_skipped_total",
			Help: "Redis calls failed fast, without reaching their server, because it kept failing.",
		}, func() float64 { return float64(b.Total().Skipped) }),
	)
	return b
}

// splitList splits a comma-separated list, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// redisLogger writes go-redis's messages into zap.
type redisLogger struct{ log *zap.SugaredLogger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debugf(format, v...)
}

// openStore connects the store named by the flags: Redis when a topology is given, else the
// in-memory store. Redis that does not answer yet is not an error: readiness reports it.
func openStore(ctx context.Context, rf redisFlags, breaker *storage.Breaker, log *zap.Logger) (algorithms.Decider, server.Pinger, func(), error) {
	if !rf.any() {
		log.Warn("no Redis topology (-redis-url, -redis-shards, -redis-cluster or -redis-sentinel): using the in-memory store; state is local to this process, so run a single replica only")
		d := algorithms.NewMemory(storage.NewMemory(storage.MemoryOptions{}))
		return d, d, func() {}, nil
	}
	opts, err := rf.options()
	if err != nil {
		return nil, nil, nil, err
	}
	shardLog := log.Named("redis")
	opts.OnShardHealth = func(addr string, err error) {
		if err != nil {
			shardLog.Warn("redis shard stopped answering; the ring drops it after 3 failed checks and its keys move to the other shards", zap.String("shard", addr), zap.Error(err))
			return
		}
		shardLog.Info("redis shard answers; it is in the ring and its keys are back on it", zap.String("shard", addr))
	}
	opts.Breaker, opts.NoBreaker = breaker, breaker == nil
	client, err := storage.Open(opts)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", rf.topologyFlag(), err)
	}
	d := algorithms.NewRedis(storage.NewRedis(client))
	log.Info("redis", rf.describe()...)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := d.Ping(ctx); err != nil {
		if isAuthError(err) {
			log.Error("redis refused the credentials (check -redis-username, -redis-password or the URL's user:password); not ready until it accepts them", zap.Error(err))
		} else {
			log.Warn("redis does not answer yet; not ready until it does", zap.Error(err))
		}
	}
	return d, d, func() { _ = client.Close() }, nil
}

// watchConfig reloads the configuration when its directory changes, until ctx ends. digest
// is that of the set in force; a load of the same files changes nothing. Every failed reload
// is counted; a failure is logged once, until it changes or a reload succeeds.
func watchConfig(ctx context.Context, dir, digest string, srv *server.Server, log *zap.Logger) {
	lastFailure := ""
	err := config.Watch(ctx, config.WatchOptions{
		Dir: dir,
		OnLoad: func(set *config.Set) {
			lastFailure = ""
			if set.Digest() == digest {
				return // the files in force, loaded again
			}
			digest = set.Digest()
			srv.SetRules(set)
			srv.Reloaded()
			log.Info("configuration reloaded", zap.Strings("domains", set.Domains()), zap.Int("rules", set.RuleCount()))
			warnIfEmpty(set, dir, log)
		},
		OnError: func(err error) {
			srv.ReloadFailed()
			if err.Error() != lastFailure {
				lastFailure = err.Error()
				log.Error("configuration reload failed; keeping the previous configuration", zap.Error(err))
			}
		},
	})
	if err != nil {
		log.Error("configuration watch stopped; reloads are off", zap.Error(err))
	}
}

// warnIfEmpty warns that a configuration without domains limits nothing: often a wrong path.
func warnIfEmpty(set *config.Set, dir string, log *zap.Logger) {
	if len(set.Domains()) == 0 {
		log.Warn("the configuration has no domains: every request is allowed", zap.String("dir", dir))
	}
}

// trackHealth keeps the gRPC health status in step with readiness until ctx ends.
func trackHealth(ctx context.Context, srv *server.Server, hs *health.Server) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		st := healthpb.HealthCheckResponse_SERVING
		if srv.Ready(ctx) != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		hs.SetServingStatus("", st)
		hs.SetServingStatus("envoy.service.ratelimit.v3.RateLimitService", st)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
