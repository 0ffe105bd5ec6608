package client_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ratelimitd/ratelimitd/client"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// blackHole accepts connections and never answers.
func blackHole(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

func TestDefaultTimeout(t *testing.T) {
	c, err := client.Dial(blackHole(t), client.Options{Timeout: 20 * time.Millisecond}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	calls := map[string]func(ctx context.Context) error{
		"Check": func(ctx context.Context) error {
			_, err := c.Check(ctx, &ratelimitdv1.CheckRequest{})
			return err
		},
		"Acquire": func(ctx context.Context) error {
			_, err := c.Acquire(ctx, &ratelimitdv1.AcquireRequest{})
			return err
		},
		"Release": func(ctx context.Context) error {
			_, err := c.Release(ctx, &ratelimitdv1.ReleaseRequest{})
			return err
		},
	}
	for name, call := range calls {
		// No deadline: the client's timeout ends the call.
		if err := call(context.Background()); status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("%s without a deadline: %v, want DeadlineExceeded", name, err)
		}
		// The caller's deadline is kept: a cancelled context ends the call as Canceled.
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		time.AfterFunc(50*time.Millisecond, cancel)
		if err := call(ctx); status.Code(err) != codes.Canceled {
			t.Errorf("%s with a deadline of an hour, cancelled: %v, want Canceled (not the client's timeout)", name, err)
		}
		cancel()
	}
}
