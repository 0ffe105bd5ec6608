package server

import (
	"strconv"
	"strings"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"

	"github.com/ratelimitd/ratelimitd/config"
)

// counterKey builds the storage key of one limited descriptor:
//
//	<prefix>{<domain>|<key>=<value>|...}:<algorithm>:<window ms>
//
// For priority and fair_share, whose rule shares one capacity between every value of the last
// entry (the class or tenant), the last entry is written as its key alone: `...|<key>}`.
//
// Every part is escaped (see escapeInto), so no value can forge a separator or a brace and two
// different descriptors never share a counter. The whole descriptor is the Redis Cluster hash
// tag, so the key of a decision always lives on one slot. The algorithm and the window length
// are part of the key: a rule that changes either starts from fresh state instead of decoding
// another algorithm's.
func counterKey(prefix, domain string, entries []*ratelimitv3.RateLimitDescriptor_Entry, l *config.Limit) string {
	n := len(prefix) + len(domain) + 32
	for _, e := range entries {
		n += len(e.GetKey()) + len(e.GetValue()) + 2
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(prefix)
	b.WriteByte('{')
	escapeInto(&b, domain)
	for i, e := range entries {
		b.WriteByte('|')
		escapeInto(&b, e.GetKey())
		if i == len(entries)-1 && l.Algorithm.Shared() {
			// Every class or tenant shares the rule's one capacity: the last value is left
			// out, and so is the '=', which no escaped key contains, so the key stays
			// distinct from any value (a literal "*" included).
			break
		}
		b.WriteByte('=')
		escapeInto(&b, e.GetValue())
	}
	b.WriteString("}:")
	b.WriteString(algorithmTag(l.Algorithm))
	b.WriteByte(':')
	b.WriteString(strconv.FormatInt(l.Window.Milliseconds(), 10))
	return b.String()
}

func algorithmTag(a config.Algorithm) string {
	switch a {
	case config.SlidingWindow:
		return "sw"
	case config.TokenBucket:
		return "tb"
	case config.Priority:
		return "pr"
	case config.FairShare:
		return "fs"
	}
	return "fw"
}

// escapeInto writes s with every byte that has a meaning in a key ('%', '|', '=', '{', '}')
// percent-encoded, which makes the encoding injective.
func escapeInto(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	start := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', '|', '=', '{', '}':
			b.WriteString(s[start:i])
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xF])
			start = i + 1
		}
	}
	b.WriteString(s[start:])
}
