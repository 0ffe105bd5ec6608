package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ratelimitd/ratelimitd/client"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// Service B of a chain A -> B -> C: guarded by ratelimitd per caller, and calling C through
// the client interceptor, so that C's refusals reach A with C's retry-after.
func Example() {
	rl, err := client.Dial("ratelimitd:8081", client.Options{}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer rl.Close()

	byCaller := func(ctx context.Context, fullMethod string, _ any) *ratelimitdv1.CheckRequest {
		md, _ := metadata.FromIncomingContext(ctx)
		caller := md.Get("x-caller")
		if len(caller) == 0 {
			return nil // not limited
		}
		return &ratelimitdv1.CheckRequest{Domain: "b", Descriptors: []*ratelimitdv1.Descriptor{{
			Entries: []*ratelimitdv1.Entry{{Key: "method", Value: fullMethod}, {Key: "caller", Value: caller[0]}},
		}}}
	}
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(client.UnaryServerInterceptor(rl, byCaller)),
		grpc.ChainStreamInterceptor(client.StreamServerInterceptor(rl, byCaller)),
	)
	defer srv.Stop()

	toC, err := grpc.NewClient("c:8443", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(client.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(client.StreamClientInterceptor()))
	if err != nil {
		log.Fatal(err)
	}
	defer toC.Close()
	// Register B's services on srv; their handlers call C over toC with their own context
	// and return C's errors (wrapped or not).
}

// An HTTP API limited per API key, failing closed when ratelimitd cannot answer.
func ExampleHTTPMiddleware() {
	rl, err := client.Dial("ratelimitd:8081", client.Options{Timeout: 50 * time.Millisecond},
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer rl.Close()
	byKey := func(r *http.Request) *ratelimitdv1.CheckRequest {
		return &ratelimitdv1.CheckRequest{Domain: "api", Descriptors: []*ratelimitdv1.Descriptor{{
			Entries: []*ratelimitdv1.Entry{{Key: "api_key", Value: r.Header.Get("X-Api-Key")}},
		}}}
	}
	limited := client.HTTPMiddleware(rl, byKey, client.FailClosed())
	http.Handle("/", limited(http.NotFoundHandler()))
}

func ExampleRetryHint() {
	req := &ratelimitdv1.CheckRequest{Domain: "shop", Descriptors: []*ratelimitdv1.Descriptor{{
		Entries: []*ratelimitdv1.Entry{{Key: "user", Value: "alice"}},
	}}}
	resp := &ratelimitdv1.CheckResponse{
		Grade:      ratelimitdv1.Grade_GRADE_OVER_LIMIT,
		RetryAfter: durationpb.New(1500 * time.Millisecond),
		Descriptors: []*ratelimitdv1.DescriptorResult{{
			Grade: ratelimitdv1.Grade_GRADE_OVER_LIMIT, Limited: true, Limit: 5,
			RetryAfter: durationpb.New(1500 * time.Millisecond),
		}},
	}
	st := client.RefusalStatus(req, resp)
	fmt.Println(st.Code(), client.PushbackTrailer(st))
	delay, never, ok := client.RetryHint(st.Err())
	fmt.Println(delay, never, ok)
	// Output:
	// ResourceExhausted map[grpc-retry-pushback-ms:[1500]]
	// 1.5s false true
}
