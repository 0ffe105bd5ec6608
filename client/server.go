package client

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// DescriptorFunc builds the request to check for a call: its domain and descriptors, and
// cost, priority and tenant if the rules need them. fullMethod is "/package.Service/Method";
// req is the request message of a unary call, nil for a stream (which is checked once, when
// it starts). A nil result means the call is not limited.
type DescriptorFunc func(ctx context.Context, fullMethod string, req any) *ratelimitdv1.CheckRequest

// Option changes how the server interceptors and the HTTP middleware behave.
type Option func(*settings)

type settings struct {
	failClosed bool
	onError    func(ctx context.Context, err error)
	memory     int
}

// FailClosed refuses calls when ratelimitd cannot answer (gRPC UNAVAILABLE, HTTP 503, with
// no retry hint). Without it, such calls are served unlimited (fail open).
func FailClosed() Option { return func(s *settings) { s.failClosed = true } }

// OnError receives every failed Check (to log or count it) before the fail-open or
// fail-closed decision; by default errors are dropped.
func OnError(f func(ctx context.Context, err error)) Option {
	return func(s *settings) { s.onError = f }
}

// DownstreamMemory sets how many domain-and-descriptors keys a server interceptor remembers
// a downstream's retry hint for (default 4096; the entries of ended hints are dropped
// first, then arbitrary ones). 0 or less remembers nothing: a refusal of the service's own
// then carries only its own retry-after.
func DownstreamMemory(keys int) Option { return func(s *settings) { s.memory = keys } }

// guard checks calls against ratelimitd and turns refusals into statuses.
type guard struct {
	c        *Client
	settings settings

	mu    sync.Mutex
	until map[string]remembered // by hintKey
}

// remembered is a downstream's advice, as the time it ends.
type remembered struct {
	code  codes.Code
	until time.Time
}

func newGuard(c *Client, opts []Option) *guard {
	g := &guard{c: c, settings: settings{memory: 4096}}
	for _, o := range opts {
		o(&g.settings)
	}
	if g.settings.memory > 0 {
		g.until = make(map[string]remembered)
	}
	return g
}

// verdict is the outcome of checking a call.
type verdict struct {
	resp    *ratelimitdv1.CheckResponse // nil when the check failed
	refusal *status.Status              // nil when the call may go ahead
	hint    hint
}

// check asks ratelimitd about req, bounded by the client's timeout. A failed Check gives a
// refusal only with FailClosed.
func (g *guard) check(ctx context.Context, req *ratelimitdv1.CheckRequest) verdict {
	cctx, cancel := context.WithTimeout(ctx, g.c.timeout)
	defer cancel()
	resp, err := g.c.Check(cctx, req)
	if err != nil {
		if g.settings.onError != nil {
			g.settings.onError(ctx, err)
		}
		if g.settings.failClosed {
			return verdict{refusal: status.New(codes.Unavailable, "rate limiter unavailable")}
		}
		return verdict{}
	}
	if resp.GetAllowed() {
		return verdict{resp: resp}
	}
	h := hintOfResponse(resp)
	st := RefusalStatus(req, resp)
	if own := h; !own.never {
		if down, ok := g.recall(hintKey(req)); ok && down.delay > own.delay {
			h = own.merge(down)
			st = withHint(st, h, st.Message()+" (and downstream asked to wait longer)")
		}
	}
	return verdict{resp: resp, refusal: st, hint: h}
}

// downstream turns a handler's error that carries a downstream retry hint (in the error, or
// recorded by the client interceptor in the handler's context) into a refusal of the
// service's caller, and remembers the hint for key. Other errors are returned unchanged.
func (g *guard) downstream(err error, car *carrier, key string) error {
	h, ok := hintOf(err)
	st, _ := status.FromError(err)
	ch, carried, cok := car.get()
	switch {
	case !ok && !cok:
		return err
	case !ok && callersFault(st.Code()):
		// The handler's answer about the request itself (bad input, not found, ...) stands,
		// whatever the downstream said earlier.
		return err
	case !ok:
		// The handler replaced the downstream refusal by another error (Internal, Unknown, a
		// back-pressure code without a hint, ...): rebuild it from what the client
		// interceptor recorded.
		h = ch
		msg := "downstream refused: " + st.Message()
		st = refusal(h, msg, carried)
	case cok:
		h = h.merge(ch)
	}
	g.remember(key, h)
	return withHint(st, h, st.Message()).Err()
}

// callersFault reports whether a code speaks of the request itself, not of the service's
// ability to serve it: such an answer is never replaced by a downstream's back-pressure.
func callersFault(c codes.Code) bool {
	switch c {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented:
		return true
	}
	return false
}

// remember records until when the downstream of key asked to be left alone.
func (g *guard) remember(key string, h hint) {
	if g.until == nil || key == "" || h.never || h.delay <= 0 {
		return
	}
	now := g.c.now()
	until := now.Add(h.delay)
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.until[key]; ok && old.until.After(until) {
		return
	}
	if _, ok := g.until[key]; !ok && len(g.until) >= g.settings.memory {
		for k, r := range g.until {
			if !r.until.After(now) {
				delete(g.until, k)
			}
		}
		for k := range g.until {
			if len(g.until) < g.settings.memory {
				break
			}
			delete(g.until, k)
		}
	}
	g.until[key] = remembered{code: h.code, until: until}
}

// recall returns what remains of the downstream hint remembered for key.
func (g *guard) recall(key string) (hint, bool) {
	if g.until == nil {
		return hint{}, false
	}
	now := g.c.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.until[key]
	if !ok {
		return hint{}, false
	}
	if !r.until.After(now) {
		delete(g.until, key)
		return hint{}, false
	}
	return hint{code: r.code, delay: r.until.Sub(now)}, true
}

// hintKey identifies a request's domain and descriptors (not its cost).
func hintKey(req *ratelimitdv1.CheckRequest) string {
	var b strings.Builder
	b.WriteString(req.GetDomain())
	for _, d := range req.GetDescriptors() {
		b.WriteByte(0)
		for _, e := range d.GetEntries() {
			b.WriteString(e.GetKey())
			b.WriteByte(1)
			b.WriteString(e.GetValue())
			b.WriteByte(2)
		}
	}
	return b.String()
}

// withHint replaces the retry advice of a refusal st (RetryInfo, the ErrorInfo of
// ratelimitd, the code) by h, keeping its quota violations and its other details, and names
// it msg.
func withHint(st *status.Status, h hint, msg string) *status.Status {
	var extra []*anypb.Any
	for _, a := range st.Proto().GetDetails() {
		switch {
		case a.MessageIs((*errdetails.RetryInfo)(nil)), a.MessageIs((*errdetails.QuotaFailure)(nil)):
		case a.MessageIs((*errdetails.ErrorInfo)(nil)):
			var ei errdetails.ErrorInfo
			if a.UnmarshalTo(&ei) != nil || ei.GetDomain() != ErrorDomain {
				extra = append(extra, a)
			}
		default:
			extra = append(extra, a)
		}
	}
	return refusal(h, msg, violationsOf(st), extra...)
}

// UnaryServerInterceptor checks every unary call for which fn returns a request, before the
// handler runs, and refuses it as [RefusalStatus] says, with the grpc-retry-pushback-ms
// trailer. A refusal of the service's own carries at least what remains of the retry hint
// its downstream last gave for the same domain and descriptors (see [DownstreamMemory]).
//
// When the handler fails with a downstream retry hint, in its error or recorded in its
// context by [UnaryClientInterceptor], the caller is refused with that hint (see the
// package documentation). The handler's context carries the hint for [DownstreamHint].
func UnaryServerInterceptor(c *Client, fn DescriptorFunc, opts ...Option) grpc.UnaryServerInterceptor {
	g := newGuard(c, opts)
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		key := ""
		if creq := fn(ctx, info.FullMethod, req); creq != nil {
			v := g.check(ctx, creq)
			if v.refusal != nil {
				setTrailer(ctx, v.refusal, nil)
				return nil, v.refusal.Err()
			}
			key = hintKey(creq)
		}
		ctx, car := withCarrier(ctx)
		resp, err := handler(ctx, req)
		if err == nil {
			return resp, nil
		}
		err = g.downstream(err, car, key)
		if st, ok := status.FromError(err); ok {
			setTrailer(ctx, st, nil)
		}
		return resp, err
	}
}

// StreamServerInterceptor is [UnaryServerInterceptor] for streams: fn is called with a nil
// request when the stream starts, and the whole stream is one call to Check.
func StreamServerInterceptor(c *Client, fn DescriptorFunc, opts ...Option) grpc.StreamServerInterceptor {
	g := newGuard(c, opts)
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		key := ""
		if creq := fn(ctx, info.FullMethod, nil); creq != nil {
			v := g.check(ctx, creq)
			if v.refusal != nil {
				setTrailer(ctx, v.refusal, ss)
				return v.refusal.Err()
			}
			key = hintKey(creq)
		}
		ctx, car := withCarrier(ctx)
		err := handler(srv, &serverStream{ServerStream: ss, ctx: ctx})
		if err == nil {
			return nil
		}
		err = g.downstream(err, car, key)
		if st, ok := status.FromError(err); ok {
			setTrailer(ctx, st, ss)
		}
		return err
	}
}

// setTrailer sends the pushback trailer of a refusal, on ss when given.
func setTrailer(ctx context.Context, st *status.Status, ss grpc.ServerStream) {
	md := PushbackTrailer(st)
	if md == nil {
		return
	}
	if ss != nil {
		ss.SetTrailer(md)
		return
	}
	_ = grpc.SetTrailer(ctx, md)
}

// serverStream is a ServerStream with the handler's context.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *serverStream) Context() context.Context { return s.ctx }

// carrier collects the downstream retry hints met while serving one call, and the quota
// violations that came with them.
type carrier struct {
	mu         sync.Mutex
	h          hint
	set        bool
	violations []*errdetails.QuotaFailure_Violation
}

type carrierKey struct{}

// withCarrier returns ctx with a new carrier.
func withCarrier(ctx context.Context) (context.Context, *carrier) {
	c := &carrier{}
	return context.WithValue(ctx, carrierKey{}, c), c
}

// carrierOf returns the carrier of ctx, or nil.
func carrierOf(ctx context.Context) *carrier {
	c, _ := ctx.Value(carrierKey{}).(*carrier)
	return c
}

// maxCarriedViolations bounds what a carrier keeps of many refused downstream calls.
const maxCarriedViolations = 16

// record adds a downstream refusal; a nil carrier records nothing.
func (c *carrier) record(h hint, st *status.Status) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.set {
		c.h = c.h.merge(h)
	} else {
		c.h, c.set = h, true
	}
	for _, v := range violationsOf(st) {
		if len(c.violations) < maxCarriedViolations {
			c.violations = append(c.violations, v)
		}
	}
}

func (c *carrier) get() (hint, []*errdetails.QuotaFailure_Violation, bool) {
	if c == nil {
		return hint{}, nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.h, c.violations, c.set
}

// violationsOf returns the quota violations in st's details.
func violationsOf(st *status.Status) []*errdetails.QuotaFailure_Violation {
	var out []*errdetails.QuotaFailure_Violation
	for _, d := range st.Details() {
		if qf, ok := d.(*errdetails.QuotaFailure); ok {
			out = append(out, qf.GetViolations()...)
		}
	}
	return out
}

// DownstreamHint returns the retry advice that downstream calls made through
// [UnaryClientInterceptor] or [StreamClientInterceptor] with ctx (or a context derived from
// it) have met while serving the current call: the longest delay, or never. ok is false when
// none was refused, or when ctx does not come from a handler behind the server interceptors
// or the HTTP middleware.
func DownstreamHint(ctx context.Context) (delay time.Duration, never bool, ok bool) {
	h, _, ok := carrierOf(ctx).get()
	return h.delay, h.never, ok
}
