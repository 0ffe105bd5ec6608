// Package client is the Go client of ratelimitd's native API (ratelimitd.v1) and the
// middleware that carries its refusals back up a call chain as "wait this long", never as a
// blind retry.
//
// # Pieces
//
//   - [Client] calls Check, Acquire and Release with a default timeout.
//   - [UnaryServerInterceptor] and [StreamServerInterceptor] check a limit per call, with
//     descriptors built by a [DescriptorFunc], and refuse with RESOURCE_EXHAUSTED (UNAVAILABLE
//     for a shed request) carrying google.rpc.RetryInfo, google.rpc.QuotaFailure and the
//     grpc-retry-pushback-ms trailer ("-1" when the request can never pass).
//   - [HTTPMiddleware] does the same for net/http: 429 (503 when shed), Retry-After and the
//     RateLimit-Policy / RateLimit headers.
//   - [UnaryClientInterceptor] and [StreamClientInterceptor] never retry a refused call: they
//     return the refusal with its hint and record the hint for the server interceptor of the
//     same service.
//   - [RefusalStatus], [PushbackTrailer] and [RetryHint] build and read the refusals.
//
// # Back-pressure through a chain
//
// Take three services, A -> B -> C. C is guarded by ratelimitd through its server
// interceptor. B is guarded too, and calls C through a connection with the client
// interceptor:
//
//	rl := client.New(rlConn, client.Options{})
//	connToC, _ := grpc.NewClient(addrC, creds, grpc.WithChainUnaryInterceptor(client.UnaryClientInterceptor()))
//	srvB := grpc.NewServer(grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl, byUser)))
//
// When C's limit is spent, C refuses B with RESOURCE_EXHAUSTED and RetryInfo (say 40s). B's
// client interceptor does not retry: it hands the refusal to B's handler, which returns it
// (wrapped or not), and records it in the request's context. B's server interceptor sees
// the hint in the returned error (or, if the handler replaced the error by another one, in
// the context) and refuses A with RESOURCE_EXHAUSTED, RetryInfo 40s and
// grpc-retry-pushback-ms 40000. A learns to come back in 40s after one call to C, instead of
// B hammering C with retries.
//
// When B's own limit refuses too, B answers with the longer of its own retry-after and the
// downstream's: each server interceptor remembers, per domain and descriptors, until when
// its downstream asked to be left alone, and a refusal of its own carries at least the rest
// of that time. A downstream refusal that can never pass (NEVER) travels as NEVER: no
// RetryInfo and pushback "-1". A downstream shed (UNAVAILABLE) travels as UNAVAILABLE,
// unless it is combined with a spent limit, which makes it RESOURCE_EXHAUSTED.
//
// A handler that serves its caller anyway after a downstream refusal (from a cache, say)
// returns no error, and the interceptor does not turn its answer into a refusal; the handler
// can read the hint with [DownstreamHint].
//
// # When ratelimitd cannot answer
//
// The interceptors and the middleware fail open by default: if the Check fails (ratelimitd
// unreachable, its deadline passed, its store down), the call is served unlimited and the
// error goes to the [OnError] function. [FailClosed] refuses such calls with UNAVAILABLE (HTTP
// 503) without a retry hint instead.
package client

import (
	"context"
	"time"

	"google.golang.org/grpc"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// DefaultTimeout bounds a call to ratelimitd when the caller's context has no deadline.
const DefaultTimeout = 100 * time.Millisecond

// Options configure a Client. The zero value is ready to use.
type Options struct {
	// Timeout bounds each call to ratelimitd whose context has no deadline (and, in the
	// interceptors and the HTTP middleware, every Check, so that a slow ratelimitd leaves the
	// caller's deadline to the handler); DefaultTimeout when zero.
	Timeout time.Duration
	// Now is the clock of the remembered downstream hints; time.Now when nil.
	Now func() time.Time
}

// Client calls ratelimitd's native API. It is safe for concurrent use.
type Client struct {
	rl      ratelimitdv1.RateLimiterClient
	conn    *grpc.ClientConn // owned, closed by Close; nil when the caller owns the connection
	timeout time.Duration
	now     func() time.Time
}

// New returns a Client over cc, which the caller keeps and closes.
func New(cc grpc.ClientConnInterface, opts Options) *Client {
	c := &Client{rl: ratelimitdv1.NewRateLimiterClient(cc), timeout: opts.Timeout, now: opts.Now}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// Dial returns a Client with its own connection to target (see grpc.NewClient; the dial
// options must choose the transport credentials). Close closes the connection.
func Dial(target string, opts Options, dialOpts ...grpc.DialOption) (*Client, error) {
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, err
	}
	c := New(conn, opts)
	c.conn = conn
	return c, nil
}

// Close closes the connection made by Dial; it does nothing for a Client made by New.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Check asks ratelimitd whether the request may go ahead. A refusal is an answer
// (Allowed false), not an error; [RefusalStatus] turns it into one.
func (c *Client) Check(ctx context.Context, req *ratelimitdv1.CheckRequest, opts ...grpc.CallOption) (*ratelimitdv1.CheckResponse, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	return c.rl.Check(ctx, req, opts...)
}

// Acquire takes a concurrency lease; a refusal is an answer (Acquired false), not an error.
func (c *Client) Acquire(ctx context.Context, req *ratelimitdv1.AcquireRequest, opts ...grpc.CallOption) (*ratelimitdv1.AcquireResponse, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	return c.rl.Acquire(ctx, req, opts...)
}

// Release gives a lease back before its ttl ends.
func (c *Client) Release(ctx context.Context, req *ratelimitdv1.ReleaseRequest, opts ...grpc.CallOption) (*ratelimitdv1.ReleaseResponse, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	return c.rl.Release(ctx, req, opts...)
}

// bound applies the client's timeout to a context without a deadline.
func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}
