package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrShardSkipped is the error of a call to a Redis server that the breaker skips: the server
// failed several times in a row, and calls fail fast until its skip interval ends.
var ErrShardSkipped = errors.New("redis server skipped after consecutive failures")

// Breaker defaults.
const (
	DefaultBreakerFailures = 5
	DefaultBreakerMinSkip  = 100 * time.Millisecond
	DefaultBreakerMaxSkip  = 5 * time.Second
)

// BreakerOptions tune a Breaker. The zero value takes every default.
type BreakerOptions struct {
	// Failures is how many consecutive failures of one server open its breaker;
	// DefaultBreakerFailures when zero.
	Failures int
	// MinSkip is the first skip interval; it doubles each time the probe at its end fails, up
	// to MaxSkip, and starts again at MinSkip once the server answers. Defaults
	// DefaultBreakerMinSkip and DefaultBreakerMaxSkip.
	MinSkip, MaxSkip time.Duration
	// Now is the breaker's clock; time.Now when nil.
	Now func() time.Time
	// OnChange, when set, is called (outside the breaker's lock) when a server's breaker opens
	// (err is the last failure, skip the interval) or closes again (err nil).
	OnChange func(addr string, skip time.Duration, err error)
}

// Breaker skips Redis servers that keep failing, so that a dead or stalled server costs each
// request nothing instead of a connection attempt or a timeout. It watches every server
// separately: the single server, each shard of a ring, each node of a cluster.
//
// A server's breaker is closed while it answers. After Failures consecutive failures
// (connection errors and timeouts; an error reply such as a script error is an answer, not a
// failure) it opens: every call fails fast with ErrShardSkipped for the skip interval. When
// the interval ends, one call goes through as a probe (the others still fail fast): its
// success closes the breaker, its failure opens it again for twice the interval, up to
// MaxSkip. A call the caller cancelled counts neither way.
//
// A Breaker is safe for concurrent use; Open installs one (see Options.Breaker).
type Breaker struct {
	failures         int
	minSkip, maxSkip time.Duration
	now              func() time.Time
	onChange         func(addr string, skip time.Duration, err error)

	mu      sync.Mutex
	servers map[string]*serverState
}

type serverState struct {
	failures int           // consecutive failures
	skip     time.Duration // current skip interval; 0 while closed
	until    time.Time     // calls fail fast before this
	probing  bool          // a probe is in flight
	stats    BreakerStats
}

// BreakerStats count what a breaker did with the calls to one server.
type BreakerStats struct {
	// Calls went to the server (probes included); Skipped failed fast without reaching it.
	Calls, Skipped int64
	// Opened counts how many times the breaker opened (a failed probe included).
	Opened int64
}

// NewBreaker returns a Breaker with every server closed.
func NewBreaker(opts BreakerOptions) *Breaker {
	b := &Breaker{
		failures: opts.Failures,
		minSkip:  opts.MinSkip,
		maxSkip:  opts.MaxSkip,
		now:      opts.Now,
		onChange: opts.OnChange,
		servers:  map[string]*serverState{},
	}
	if b.failures <= 0 {
		b.failures = DefaultBreakerFailures
	}
	if b.minSkip <= 0 {
		b.minSkip = DefaultBreakerMinSkip
	}
	if b.maxSkip <= 0 {
		b.maxSkip = DefaultBreakerMaxSkip
	}
	b.maxSkip = max(b.maxSkip, b.minSkip)
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

// Stats returns the counts of the server at addr.
func (b *Breaker) Stats(addr string) BreakerStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.servers[addr]; s != nil {
		return s.stats
	}
	return BreakerStats{}
}

// Total returns the counts of every server added up.
func (b *Breaker) Total() BreakerStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	var t BreakerStats
	for _, s := range b.servers {
		t.Calls += s.stats.Calls
		t.Skipped += s.stats.Skipped
		t.Opened += s.stats.Opened
	}
	return t
}

// Open reports how many servers' breakers are open now.
func (b *Breaker) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, s := range b.servers {
		if s.skip > 0 {
			n++
		}
	}
	return n
}

// allow decides whether a call to addr goes through; probe reports that it is the probe of an
// open breaker. When it does not, err says why.
func (b *Breaker) allow(addr string) (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.servers[addr]
	if s == nil {
		s = &serverState{}
		b.servers[addr] = s
	}
	if s.skip == 0 {
		s.stats.Calls++
		return false, nil
	}
	now := b.now()
	if now.Before(s.until) || s.probing {
		s.stats.Skipped++
		wait := max(s.until.Sub(now), 0)
		return false, fmt.Errorf("%w: %s (next probe in %v)", ErrShardSkipped, addr, wait.Round(time.Millisecond))
	}
	s.probing = true
	s.stats.Calls++
	return true, nil
}

// done records the outcome err of a call to addr that allow let through.
func (b *Breaker) done(addr string, probe bool, err error) {
	failed := isFailure(err)
	b.mu.Lock()
	s := b.servers[addr]
	if probe {
		s.probing = false
	}
	var notify func()
	switch {
	case err != nil && ignored(err):
	case !failed:
		// An answer (an error reply included) closes the breaker.
		s.failures = 0
		if s.skip > 0 {
			s.skip = 0
			notify = func() { b.onChange(addr, 0, nil) }
		}
	case probe:
		s.skip = min(2*s.skip, b.maxSkip)
		s.until = b.now().Add(s.skip)
		s.stats.Opened++
		skip := s.skip
		notify = func() { b.onChange(addr, skip, err) }
	default:
		s.failures++
		if s.skip == 0 && s.failures >= b.failures {
			s.skip = b.minSkip
			s.until = b.now().Add(s.skip)
			s.stats.Opened++
			skip := s.skip
			notify = func() { b.onChange(addr, skip, err) }
		}
	}
	b.mu.Unlock()
	if notify != nil && b.onChange != nil {
		notify()
	}
}

// isFailure reports whether err says the server did not answer: a connection error, a
// timeout, a pool that could not hand out a connection. Error replies (the server answered),
// a closed client and a call the caller cancelled are not failures.
func isFailure(err error) bool {
	if err == nil || ignored(err) {
		return false
	}
	var reply redis.Error
	return !errors.As(err, &reply)
}

// ignored reports whether err says nothing about the server either way.
func ignored(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, redis.ErrClosed)
}

// hook is the go-redis hook that guards the client of the server at addr.
func (b *Breaker) hook(addr string) redis.Hook { return breakerHook{b: b, addr: addr} }

// install adds the breaker to c, a client of one server, named by its address.
func (b *Breaker) install(c *redis.Client) *redis.Client {
	c.AddHook(b.hook(c.Options().Addr))
	return c
}

// passed marks the context of a call the breaker let through: the commands go-redis sends
// on its behalf (the handshake of a new connection) go through the same hook and must not
// be counted again, nor be refused while the call is the probe.
type passed struct{}

type breakerHook struct {
	b    *Breaker
	addr string
}

func (h breakerHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h breakerHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if ctx.Value(passed{}) != nil {
			return next(ctx, cmd)
		}
		probe, err := h.b.allow(h.addr)
		if err != nil {
			cmd.SetErr(err)
			return err
		}
		err = next(context.WithValue(ctx, passed{}, true), cmd)
		h.b.done(h.addr, probe, err)
		return err
	}
}

func (h breakerHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if ctx.Value(passed{}) != nil {
			return next(ctx, cmds)
		}
		probe, err := h.b.allow(h.addr)
		if err != nil {
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		err = next(context.WithValue(ctx, passed{}, true), cmds)
		// A pipeline whose commands all got error replies still reached the server; a
		// connection failure sets the same error on every command and returns it.
		h.b.done(h.addr, probe, err)
		return err
	}
}
