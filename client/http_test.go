package client_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ratelimitd/ratelimitd/client"
	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// fromQuery limits requests by the descriptor in the query parameter d ("k=v/k=v"), with
// the cost in cost; requests without d are not limited.
func fromQuery(r *http.Request) *ratelimitdv1.CheckRequest {
	path := r.URL.Query().Get("d")
	if path == "" {
		return nil
	}
	cost, _ := strconv.ParseUint(r.URL.Query().Get("cost"), 10, 64)
	return checkReq(path, cost)
}

// serveHTTP serves h behind the middleware and counts the requests that reach h.
func serveHTTP(t *testing.T, c *client.Client, opts ...client.Option) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var served atomic.Int64
	h := client.HTTPMiddleware(c, fromQuery, opts...)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served.Add(1)
		io.WriteString(w, "ok")
	}))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, &served
}

func get(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestHTTPMiddleware(t *testing.T) {
	rl := startLimiter(t)
	srv, served := serveHTTP(t, rl.client)
	const absent = "<absent>"
	header := func(resp *http.Response, name string) string {
		if v, ok := resp.Header[http.CanonicalHeaderKey(name)]; ok {
			return strings.Join(v, ", ")
		}
		return absent
	}
	steps := []struct {
		query      string
		code       int
		retryAfter string // absent, or the value
		policy     string // a prefix of RateLimit-Policy, or absent
		state      string // a prefix of RateLimit, or absent
	}{
		{query: "", code: 200, retryAfter: absent, policy: absent, state: absent},
		{query: "d=user=alice", code: 200, retryAfter: absent, policy: `"per-user";q=2`, state: `"per-user";r=1;t=50`},
		{query: "d=user=alice", code: 200, retryAfter: absent, policy: `"per-user";q=2`, state: `"per-user";r=0;t=50`},
		// Spent: 429, back when the minute ends, 50s on.
		{query: "d=user=alice", code: 429, retryAfter: "50", policy: `"per-user";q=2`, state: `"per-user";r=0;t=50`},
		{query: "d=user=bob", code: 200, retryAfter: absent, policy: `"per-user";q=2`, state: `"per-user";r=1;t=50`},
		// A cost above the burst can never pass: no Retry-After.
		{query: "d=bucket=b&cost=3", code: 429, retryAfter: absent, policy: `"client/bucket";q=2`, state: `"client/bucket";r=0;`},
		// The default class may fill 5 of 10: the 6th is shed (503) with a Retry-After.
		{query: "d=api=a/priority=default&cost=5", code: 200, retryAfter: absent, policy: `"client/api/priority";q=`, state: `"client/api/priority";r=0;`},
		{query: "d=api=a/priority=default", code: 503, policy: `"client/api/priority";q=`, state: `"client/api/priority";r=0;`},
	}
	wantServed := int64(0)
	for i, s := range steps {
		resp := get(t, srv.URL+"/?"+s.query)
		if resp.StatusCode == 200 {
			wantServed++
		}
		if resp.StatusCode != s.code {
			t.Errorf("step %d (%s): status %d, want %d", i, s.query, resp.StatusCode, s.code)
		}
		ra := header(resp, "Retry-After")
		switch {
		case s.retryAfter != "" && ra != s.retryAfter:
			t.Errorf("step %d (%s): Retry-After %q, want %q", i, s.query, ra, s.retryAfter)
		case s.retryAfter == "":
			if n, err := strconv.Atoi(ra); err != nil || n < 1 {
				t.Errorf("step %d (%s): Retry-After %q, want whole seconds, at least 1", i, s.query, ra)
			}
		}
		for _, h := range []struct{ name, want string }{{"RateLimit-Policy", s.policy}, {"RateLimit", s.state}} {
			if got := header(resp, h.name); !strings.HasPrefix(got, h.want) || (h.want == absent && got != absent) {
				t.Errorf("step %d (%s): %s %q, want it to start with %q", i, s.query, h.name, got, h.want)
			}
		}
	}
	if got := served.Load(); got != wantServed {
		t.Errorf("handler served %d requests, want %d (refused ones must not reach it)", got, wantServed)
	}
}

func TestHTTPMiddlewareFailureMode(t *testing.T) {
	dead := deadLimiter(t)
	var errs atomic.Int64
	onError := client.OnError(func(context.Context, error) { errs.Add(1) })
	open, openServed := serveHTTP(t, dead, onError)
	closed, closedServed := serveHTTP(t, dead, client.FailClosed(), onError)

	if resp := get(t, open.URL+"/?d=user=alice"); resp.StatusCode != 200 {
		t.Errorf("fail open: status %d, want 200", resp.StatusCode)
	}
	resp := get(t, closed.URL+"/?d=user=alice")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "" {
		t.Errorf("fail closed: status %d, Retry-After %q; want 503 without Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if openServed.Load() != 1 || closedServed.Load() != 0 {
		t.Errorf("served open %d, closed %d; want 1 and 0", openServed.Load(), closedServed.Load())
	}
	if errs.Load() != 2 {
		t.Errorf("OnError called %d times, want 2", errs.Load())
	}
}
