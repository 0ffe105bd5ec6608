package config

import (
	"slices"
	"strings"
)

// Set is the compiled, immutable configuration of every domain. A Set never changes once
// Load returns it, so it is safe for concurrent use; a reload builds a new Set, which the
// caller swaps in atomically. The *Limit values it hands out are shared and must not be
// modified.
type Set struct {
	domains map[string]*node
	names   []string // sorted
	rules   int
	digest  string
}

// Digest identifies the files a Set was loaded from (their names and contents): two loads of
// unchanged files have the same digest.
func (s *Set) Digest() string { return s.digest }

// node is one descriptor of the tree; the root of a domain is a node without a limit.
type node struct {
	limit    *Limit // nil when the descriptor has no rate_limit
	children map[string]*keyChildren
}

// keyChildren holds the children of a node that share one key: by exact value, the wildcard
// values in file order, and the key-only default.
type keyChildren struct {
	exact     map[string]*node
	wildcards []wildcard
	def       *node
}

// wildcard is a value pattern with at least one '*'; parts are the literal runs around the
// stars, so a pattern with n stars has n+1 parts (possibly empty).
type wildcard struct {
	parts []string
	node  *node
}

// Domains returns the names of the configured domains, sorted.
func (s *Set) Domains() []string { return slices.Clone(s.names) }

// RuleCount returns the number of descriptor nodes that carry a rate_limit.
func (s *Set) RuleCount() int { return s.rules }

// Lookup returns the limit for one request descriptor in domain, or nil when nothing matches
// or the matched node has no rate_limit. Matching follows envoyproxy/ratelimit: at each depth
// the exact key/value, then the first wildcard value in file order that matches the value,
// then the key-only default; no backtracking; a limit applies only when the descriptor has
// exactly as many entries as the path to it. Lookup does no I/O and does not allocate.
func Lookup[E Entry](s *Set, domain string, entries []E) *Limit {
	if s == nil || len(entries) == 0 {
		return nil
	}
	n := s.domains[domain]
	for _, e := range entries {
		if n == nil {
			return nil
		}
		n = n.child(e.GetKey(), e.GetValue())
	}
	if n == nil {
		return nil
	}
	return n.limit
}

// child picks the child of n for one request entry, or nil.
func (n *node) child(key, value string) *node {
	kc := n.children[key]
	if kc == nil {
		return nil
	}
	if c := kc.exact[value]; c != nil {
		return c
	}
	for i := range kc.wildcards {
		if kc.wildcards[i].match(value) {
			return kc.wildcards[i].node
		}
	}
	return kc.def
}

// match reports whether value matches the pattern, each '*' standing for any run of
// characters, possibly empty. Leftmost matching of the middle parts is enough because stars
// are the only metacharacter.
func (w *wildcard) match(value string) bool {
	first, last := w.parts[0], w.parts[len(w.parts)-1]
	if len(value) < len(first)+len(last) || !strings.HasPrefix(value, first) || !strings.HasSuffix(value, last) {
		return false
	}
	rest := value[len(first) : len(value)-len(last)]
	for _, p := range w.parts[1 : len(w.parts)-1] {
		i := strings.Index(rest, p)
		if i < 0 {
			return false
		}
		rest = rest[i+len(p):]
	}
	return true
}

// newWildcard compiles a value containing at least one '*'.
func newWildcard(pattern string, n *node) wildcard {
	return wildcard{parts: strings.Split(pattern, "*"), node: n}
}
