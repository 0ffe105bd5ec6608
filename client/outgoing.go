package client

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// UnaryClientInterceptor handles refusals of downstream calls: when a call fails with
// RESOURCE_EXHAUSTED or UNAVAILABLE and a retry hint (RetryInfo, or the
// grpc-retry-pushback-ms trailer), it does not retry. It returns the refusal with the hint in
// the status itself (a RetryInfo, or ErrorInfo reason "NEVER", is added if only the trailer
// had it), and records the hint in the context's carrier when the call is made from a handler
// behind [UnaryServerInterceptor], [StreamServerInterceptor] or [HTTPMiddleware], so that the
// service passes it on to its own caller.
//
// The interceptor does not retry by itself; gRPC's own retry policy, if the connection has
// one whose retryableStatusCodes include these codes, sits below it and honours the
// pushback (never retrying on "-1"): leave those codes out of it to keep back-pressure
// prompt.
func UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var trailer metadata.MD
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Trailer(&trailer))...)
		if err == nil {
			return nil
		}
		return keepHint(ctx, err, trailer)
	}
}

// StreamClientInterceptor is [UnaryClientInterceptor] for streams: the refusal of a stream
// (from NewStream or RecvMsg) is returned with its hint and recorded.
func StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, keepHint(ctx, err, nil)
		}
		return &clientStream{ClientStream: cs, ctx: ctx}, nil
	}
}

// clientStream watches RecvMsg for a refusal.
type clientStream struct {
	grpc.ClientStream
	ctx context.Context
}

func (s *clientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return keepHint(s.ctx, err, s.ClientStream.Trailer())
}

// keepHint returns err with its retry hint in the status and records the hint in ctx's
// carrier; an error without a hint is returned as it is.
func keepHint(ctx context.Context, err error, trailer metadata.MD) error {
	h, ok := hintOf(err, trailer)
	if !ok {
		return err
	}
	st, _ := status.FromError(err)
	carrierOf(ctx).record(h, st)
	if in, ok := hintOfStatus(st); ok && in == h {
		return err
	}
	return withHint(st, h, st.Message()).Err()
}
