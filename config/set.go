package config

// Set is the compiled, immutable configuration of every domain.
type Set struct {
	// TODO(config helper): domains and their descriptor trees.
}

// Domains returns the names of the configured domains, sorted.
func (s *Set) Domains() []string { panic("TODO") }

// RuleCount returns the number of descriptor nodes that carry a rate_limit.
func (s *Set) RuleCount() int { panic("TODO") }

// Lookup returns the limit for one request descriptor in domain, or nil when nothing matches
// or the matched node has no rate_limit. Matching follows envoyproxy/ratelimit: at each depth
// the exact key/value, then the first wildcard value in file order that matches the value,
// then the key-only default; no backtracking; a limit applies only when the descriptor has
// exactly as many entries as the path to it. Lookup does no I/O and does not allocate.
func Lookup[E Entry](s *Set, domain string, entries []E) *Limit { panic("TODO") }
