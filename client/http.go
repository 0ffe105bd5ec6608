package client

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	ratelimitdv1 "github.com/ratelimitd/ratelimitd/proto/ratelimitd/v1"
)

// HTTPMiddleware checks every request for which fn returns a CheckRequest (nil: not
// limited) before the handler runs.
//
// A refused request is answered 429 Too Many Requests (503 Service Unavailable when it was
// shed) with Retry-After in whole seconds, rounded up and at least 1, except when it can
// never pass (no Retry-After then). Refused and admitted requests both carry, one list
// member per enforced limited descriptor, in the syntax of the IETF httpapi rate-limit
// headers draft:
//
//	RateLimit-Policy: "name";q=<limit>
//	RateLimit: "name";r=<remaining>;t=<seconds until reset>
//
// where name is the rule's name, else the descriptor as "domain/key=value/...". The policy
// has no w parameter: the native API does not say how long a rule's window is, and the
// draft makes w optional.
//
// The handler's request context carries the retry hints of downstream gRPC calls made
// through [UnaryClientInterceptor] (see [DownstreamHint]).
func HTTPMiddleware(c *Client, fn func(*http.Request) *ratelimitdv1.CheckRequest, opts ...Option) func(http.Handler) http.Handler {
	g := newGuard(c, opts)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if req := fn(r); req != nil {
				v := g.check(r.Context(), req)
				if v.resp != nil {
					setRateLimitHeaders(w.Header(), req, v.resp)
				}
				if v.refusal != nil {
					refuseHTTP(w, v)
					return
				}
			}
			ctx, _ := withCarrier(r.Context())
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// refuseHTTP answers a refused request.
func refuseHTTP(w http.ResponseWriter, v verdict) {
	code := http.StatusTooManyRequests
	if v.refusal.Code() == codes.Unavailable {
		code = http.StatusServiceUnavailable
	}
	if v.resp != nil && !v.hint.never {
		w.Header().Set("Retry-After", strconv.FormatInt(max(ceilSeconds(v.hint.delay), 1), 10))
	}
	http.Error(w, v.refusal.Message(), code)
}

// setRateLimitHeaders sets RateLimit-Policy and RateLimit for the enforced limited
// descriptors of resp.
func setRateLimitHeaders(h http.Header, req *ratelimitdv1.CheckRequest, resp *ratelimitdv1.CheckResponse) {
	var policy, state strings.Builder
	for i, d := range resp.GetDescriptors() {
		if !d.GetLimited() || d.GetUnlimited() || d.GetShadow() {
			continue
		}
		name := d.GetName()
		if name == "" {
			var entries []*ratelimitdv1.Entry
			if i < len(req.GetDescriptors()) {
				entries = req.GetDescriptors()[i].GetEntries()
			}
			name = policyPath(req.GetDomain(), entries)
		}
		if policy.Len() > 0 {
			policy.WriteString(", ")
			state.WriteString(", ")
		}
		remaining := d.GetRemaining()
		if !d.GetAllowed() {
			remaining = 0
		}
		quoted := sfString(name)
		policy.WriteString(quoted)
		policy.WriteString(";q=")
		policy.WriteString(strconv.FormatUint(d.GetLimit(), 10))
		state.WriteString(quoted)
		state.WriteString(";r=")
		state.WriteString(strconv.FormatUint(remaining, 10))
		state.WriteString(";t=")
		state.WriteString(strconv.FormatInt(ceilSeconds(d.GetResetAfter().AsDuration()), 10))
	}
	if policy.Len() > 0 {
		h.Set("RateLimit-Policy", policy.String())
		h.Set("RateLimit", state.String())
	}
}

// sfString quotes s as a structured-field string; characters it cannot hold become '_'.
func sfString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('_')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// policyPath names a policy by its domain and descriptor keys ("domain/key/key"), as ratelimitd
// names rules, so that no request value reaches the response headers.
func policyPath(domain string, entries []*ratelimitdv1.Entry) string {
	var b strings.Builder
	b.WriteString(domain)
	for _, e := range entries {
		b.WriteByte('/')
		b.WriteString(e.GetKey())
	}
	return b.String()
}
