package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads every *.yaml and *.yml file in dir (dot-files and dot-directories skipped, as
// Kubernetes ConfigMap mounts have them), every YAML document in each, validates all of them
// and compiles them. The error lists every problem found, each as
// "file:line: domain/path: field: problem".
//
// Only the top level of dir is read; symbolic links to regular files are followed (a
// ConfigMap's shop.yaml -> ..data/shop.yaml), subdirectories are ignored. Empty documents are
// skipped, but a file must hold at least one document with a domain, and a domain may be
// defined only once across all files. A directory without any YAML file yields an empty Set.
// When the files have problems the error is an Errors listing all of them; a directory that
// cannot be read yields a plain error.
func Load(dir string) (*Set, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load config: %w", err)
	}
	l := &loader{
		set:      &Set{domains: map[string]*node{}},
		domainAt: map[string]string{},
	}
	digest := sha256.New()
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		if ext := filepath.Ext(name); ext != ".yaml" && ext != ".yml" {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows symbolic links
		if err != nil {
			l.errs = append(l.errs, &problem{file: name, msg: err.Error()})
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			l.errs = append(l.errs, &problem{file: name, msg: err.Error()})
			continue
		}
		digest.Write([]byte(name))
		digest.Write([]byte{0})
		digest.Write(data)
		digest.Write([]byte{0})
		l.file(name, data)
	}
	if len(l.errs) > 0 {
		return nil, l.errs
	}
	for d := range l.set.domains {
		l.set.names = append(l.set.names, d)
	}
	slices.Sort(l.set.names)
	l.set.digest = hex.EncodeToString(digest.Sum(nil))
	return l.set, nil
}

// loader accumulates the compiled set and every problem found on the way.
type loader struct {
	set      *Set
	domainAt map[string]string // domain -> "file:line" of its first definition
	errs     Errors
}

// at is where a problem is: the file, and the domain and descriptor path within it.
type at struct {
	file  string
	where string
}

func (l *loader) errf(a at, n *yaml.Node, field, format string, args ...any) {
	p := &problem{file: a.file, where: a.where, field: field, msg: fmt.Sprintf(format, args...)}
	if n != nil {
		p.line = n.Line
	}
	l.errs = append(l.errs, p)
}

// file loads every document of one file.
func (l *loader) file(name string, data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	docs := 0
	for i := 1; ; i++ {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// A syntax error ends the file: the decoder cannot resynchronise.
			l.errs = append(l.errs, syntaxProblem(name, err))
			return
		}
		var root *yaml.Node
		if len(doc.Content) > 0 {
			root = resolve(doc.Content[0])
		}
		if root == nil || isNull(root) {
			continue
		}
		docs++
		if size := expandedSize(root, map[*yaml.Node]int{}); size > maxDocumentNodes {
			l.errs = append(l.errs, &problem{file: name, line: root.Line, where: fmt.Sprintf("document %d", i),
				msg: fmt.Sprintf("too large: more than %d YAML nodes once aliases are expanded", maxDocumentNodes)})
			continue
		}
		l.document(name, i, root)
	}
	if docs == 0 {
		l.errs = append(l.errs, &problem{file: name, field: "domain", msg: "missing: the file has no YAML document"})
	}
}

// maxDocumentNodes bounds the size of a document with its aliases expanded, so that a few
// nested aliases ("billion laughs") cannot make Load run for ever.
const maxDocumentNodes = 1 << 20

// expandedSize counts the nodes of n with aliases expanded, stopping early above
// maxDocumentNodes. memo holds the sizes already known; a node being counted is marked as too
// large, so that a cycle counts as too large.
func expandedSize(n *yaml.Node, memo map[*yaml.Node]int) int {
	if size, ok := memo[n]; ok {
		return size
	}
	memo[n] = maxDocumentNodes + 1
	size := 1
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		size += expandedSize(n.Alias, memo)
	}
	for _, c := range n.Content {
		if size > maxDocumentNodes {
			break
		}
		size += expandedSize(c, memo)
	}
	memo[n] = size
	return size
}

// syntaxProblem turns yaml's "yaml: line N: msg" into a problem at line N.
func syntaxProblem(file string, err error) *problem {
	p := &problem{file: file, msg: err.Error()}
	rest, ok := strings.CutPrefix(p.msg, "yaml: line ")
	if !ok {
		return p
	}
	num, msg, ok := strings.Cut(rest, ": ")
	if line, err := strconv.Atoi(num); ok && err == nil {
		p.line, p.msg = line, msg
	}
	return p
}

// document loads one YAML document: a mapping with domain and descriptors.
func (l *loader) document(file string, index int, root *yaml.Node) {
	a := at{file: file, where: fmt.Sprintf("document %d", index)}
	if root.Kind != yaml.MappingNode {
		l.errf(a, root, "", "a document must be a mapping with domain and descriptors, got %s", describe(root))
		return
	}
	fields := l.mapping(a, "", root)
	var domain string
	var domainNode *yaml.Node
	domainOK := true
	if f, ok := fields.get("domain"); ok {
		domainNode = f.val
		domain, domainOK = l.str(a, "domain", f.val)
		if domain != "" {
			a.where = fmt.Sprintf("domain %q", domain)
		}
	}
	for _, f := range fields {
		switch f.name {
		case "domain", "descriptors":
		default:
			l.unknown(a, "", f, "domain", "descriptors")
		}
	}
	switch {
	case domainNode == nil:
		l.errf(a, root, "domain", "missing")
	case domain == "" && domainOK:
		l.errf(a, domainNode, "domain", "must not be empty")
	}
	top := &node{}
	rules := 0
	if f, ok := fields.get("descriptors"); ok {
		rules = l.descriptors(a, a.where+" ", domain, f.val, top)
	}
	if domain == "" {
		return
	}
	here := file + ":" + strconv.Itoa(domainNode.Line)
	if first, dup := l.domainAt[domain]; dup {
		l.errf(a, domainNode, "domain", "%q is already defined at %s", domain, first)
		return
	}
	l.domainAt[domain] = here
	l.set.domains[domain] = top
	l.set.rules += rules
}

// descriptors compiles a descriptors list into the children of parent and returns the number
// of rate limits in it. prefix starts the where of each item; path is the Limit.Path of
// parent.
func (l *loader) descriptors(a at, prefix, path string, list *yaml.Node, parent *node) int {
	list = resolve(list)
	if isNull(list) {
		return 0
	}
	if list.Kind != yaml.SequenceNode {
		l.errf(a, list, "descriptors", "must be a list, got %s", describe(list))
		return 0
	}
	type sibling struct{ key, value string }
	type seenAt struct{ index, line int }
	seen := map[sibling]seenAt{}
	rules := 0
	for i, item := range list.Content {
		item = resolve(item)
		ia := at{file: a.file, where: fmt.Sprintf("%sdescriptors[%d]", prefix, i)}
		if item.Kind != yaml.MappingNode {
			l.errf(ia, item, "", "a descriptor must be a mapping, got %s", describe(item))
			continue
		}
		fields := l.mapping(ia, "", item)
		var key, value string
		keyField, hasKey := fields.get("key")
		keyOK := true
		if hasKey {
			key, keyOK = l.str(ia, "key", keyField.val)
		}
		if f, ok := fields.get("value"); ok {
			value, _ = l.str(ia, "value", f.val)
		}
		switch {
		case key != "" && value != "":
			ia.where += fmt.Sprintf(" (%s=%s)", key, value)
		case key != "":
			ia.where += fmt.Sprintf(" (%s)", key)
		}
		var shadow, detailed bool
		for _, f := range fields {
			switch f.name {
			case "key", "value", "rate_limit", "descriptors":
			case "shadow_mode":
				shadow, _ = l.boolean(ia, "shadow_mode", f.val)
			case "detailed_metric":
				detailed, _ = l.boolean(ia, "detailed_metric", f.val)
			default:
				l.unknown(ia, "", f, "key", "value", "rate_limit", "descriptors", "shadow_mode", "detailed_metric")
			}
		}
		ok := true
		switch {
		case !hasKey:
			l.errf(ia, item, "key", "missing")
			ok = false
		case key == "":
			if keyOK {
				l.errf(ia, keyField.val, "key", "must not be empty")
			}
			ok = false
		}
		if ok {
			s := sibling{key, value}
			if first, dup := seen[s]; dup {
				l.errf(ia, item, "", "duplicate of descriptors[%d] at line %d (same key and value among siblings)", first.index, first.line)
				ok = false
			} else {
				seen[s] = seenAt{i, item.Line}
			}
		}
		segment := key
		if value != "" {
			segment += "=" + value
		}
		n := &node{}
		if f, has := fields.get("rate_limit"); has && !isNull(resolve(f.val)) {
			n.limit = l.rateLimit(ia, f.val, path+"/"+segment)
			if n.limit != nil {
				n.limit.ShadowMode = shadow
				n.limit.DetailedMetric = detailed
				rules++
			}
		}
		if f, has := fields.get("descriptors"); has {
			rules += l.descriptors(ia, ia.where+" > ", path+"/"+segment, f.val, n)
		}
		if n.limit != nil && n.limit.Algorithm.Shared() {
			l.checkShared(ia, item, fields, value, n)
		}
		if ok {
			parent.add(key, value, n)
		}
	}
	return rules
}

// add inserts c as the child of n for key and value.
func (n *node) add(key, value string, c *node) {
	if n.children == nil {
		n.children = map[string]*keyChildren{}
	}
	kc := n.children[key]
	if kc == nil {
		kc = &keyChildren{}
		n.children[key] = kc
	}
	switch {
	case value == "":
		kc.def = c
	case strings.Contains(value, "*"):
		kc.wildcards = append(kc.wildcards, newWildcard(value, c))
	default:
		if kc.exact == nil {
			kc.exact = map[string]*node{}
		}
		kc.exact[value] = c
	}
}

// rateLimit compiles a rate_limit mapping; it returns nil when the mapping has problems.
func (l *loader) rateLimit(a at, n *yaml.Node, path string) *Limit {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		l.errf(a, n, "rate_limit", "must be a mapping, got %s", describe(n))
		return nil
	}
	before := len(l.errs)
	lim := &Limit{Path: path, Algorithm: FixedWindow, UnitMultiplier: 1, NearLimitRatio: DefaultNearLimitRatio, FailureMode: FailError}
	fields := l.mapping(a, "rate_limit.", n)
	var unitField, burstField, priorityField, fairShareField *field
	var replacesAt []*yaml.Node
	var burst uint32
	for _, f := range fields {
		switch f.name {
		case "unit":
			unitField = &f
		case "requests_per_unit":
			lim.RequestsPerUnit, _ = l.uint32(a, "rate_limit.requests_per_unit", f.val, 0)
		case "unlimited":
			lim.Unlimited, _ = l.boolean(a, "rate_limit.unlimited", f.val)
		case "name":
			lim.Name, _ = l.str(a, "rate_limit.name", f.val)
		case "replaces":
			lim.Replaces, replacesAt = l.replaces(a, f.val)
		case "algorithm":
			s, ok := l.str(a, "rate_limit.algorithm", f.val)
			switch alg := Algorithm(s); {
			case !ok:
			case alg == FixedWindow || alg == SlidingWindow || alg == TokenBucket || alg == Priority || alg == FairShare || alg == Concurrency:
				lim.Algorithm = alg
			default:
				l.errf(a, f.val, "rate_limit.algorithm", "unknown algorithm %q (want %s, %s, %s, %s, %s or %s)", s, FixedWindow, SlidingWindow, TokenBucket, Priority, FairShare, Concurrency)
			}
		case "priority":
			priorityField = &f
		case "fair_share":
			fairShareField = &f
		case "burst":
			if v := resolve(f.val); !isNull(v) {
				burstField = &f
				burst, _ = l.uint32(a, "rate_limit.burst", v, 1)
			}
		case "unit_multiplier":
			if v := resolve(f.val); !isNull(v) {
				lim.UnitMultiplier, _ = l.uint32(a, "rate_limit.unit_multiplier", v, 1)
			}
		case "near_limit_ratio":
			if v := resolve(f.val); !isNull(v) {
				lim.NearLimitRatio, _ = l.ratio(a, "rate_limit.near_limit_ratio", v)
			}
		case "count_rejected":
			lim.CountRejected, _ = l.boolean(a, "rate_limit.count_rejected", f.val)
		case "failure_mode":
			s, ok := l.str(a, "rate_limit.failure_mode", f.val)
			switch m := FailureMode(s); {
			case !ok:
			case m == FailError || m == FailAllow || m == FailDeny || m == FailLocal:
				lim.FailureMode = m
			default:
				l.errf(a, f.val, "rate_limit.failure_mode", "unknown failure mode %q (want %s, %s, %s or %s)", s, FailError, FailAllow, FailDeny, FailLocal)
			}
		default:
			l.unknown(a, "rate_limit.", f, "unit", "requests_per_unit", "unlimited", "name", "replaces",
				"algorithm", "burst", "unit_multiplier", "near_limit_ratio", "count_rejected", "priority", "fair_share", "failure_mode")
		}
	}

	// Unit, as envoyproxy/ratelimit: required unless unlimited, forbidden with unlimited when
	// valid, and ignored with unlimited when not.
	var unitName string
	if unitField != nil {
		unitName, _ = l.str(a, "rate_limit.unit", unitField.val)
	}
	unit := parseUnit(unitName)
	switch {
	case lim.Unlimited && unit != UnitUnknown:
		l.errf(a, unitField.val, "rate_limit.unit", "must not be set when unlimited is true")
	case lim.Unlimited:
		unit = UnitUnknown
	case unitField == nil:
		l.errf(a, n, "rate_limit.unit", "missing (want second, minute, hour, day, week, month or year)")
	case unit == UnitUnknown:
		l.errf(a, unitField.val, "rate_limit.unit", "unknown unit %q (want second, minute, hour, day, week, month or year)", unitName)
	}
	lim.Unit = unit
	if unit != UnitUnknown {
		if uint64(lim.UnitMultiplier) > uint64(MaxWindow/unit.Duration()) {
			l.errf(a, n, "rate_limit.unit_multiplier", "a window of %d %ss is longer than %d days", lim.UnitMultiplier, strings.ToLower(unitName), MaxWindow/(24*time.Hour))
		} else {
			lim.Window = unit.Duration() * time.Duration(lim.UnitMultiplier)
		}
	}

	if lim.Algorithm == TokenBucket {
		lim.Burst = lim.RequestsPerUnit
		if burstField != nil {
			lim.Burst = burst
		}
	} else if burstField != nil {
		l.errf(a, burstField.val, "rate_limit.burst", "only valid with algorithm %s", TokenBucket)
	}
	if lim.Algorithm == TokenBucket && !lim.Unlimited && lim.Window > 0 {
		l.checkBucket(a, n, lim)
	}
	if lim.Algorithm == Concurrency && !lim.Unlimited {
		l.checkSlots(a, n, fields, lim)
	}

	switch {
	case lim.Algorithm == Priority && priorityField == nil:
		l.errf(a, n, "rate_limit.priority", "missing: algorithm %s needs its classes", Priority)
	case lim.Algorithm == Priority:
		lim.Priority = l.priority(a, priorityField.val)
	case priorityField != nil:
		l.errf(a, priorityField.key, "rate_limit.priority", "only valid with algorithm %s", Priority)
	}
	switch {
	case lim.Algorithm == FairShare:
		var v *yaml.Node
		if fairShareField != nil {
			v = fairShareField.val
		}
		lim.FairShare = l.fairShare(a, v, lim.Window)
	case fairShareField != nil:
		l.errf(a, fairShareField.key, "rate_limit.fair_share", "only valid with algorithm %s", FairShare)
	}

	for i, r := range lim.Replaces {
		if r == lim.Name {
			l.errf(a, replacesAt[i], fmt.Sprintf("rate_limit.replaces[%d].name", i), "must not be the rule's own name %q", r)
		}
	}
	if len(l.errs) > before {
		return nil
	}
	return lim
}

// Bounds within which the algorithms decide exactly: their scripts compute in Lua numbers
// (float64), exact only below 2^53, and their Go twins give the same answers only there.
const (
	// MaxWindow is the longest window: 2^36 ms, about 795 days.
	MaxWindow = (1 << 36) * time.Millisecond
	// maxBucketTolerance bounds the token bucket's burst times its emission interval, in
	// microseconds.
	maxBucketTolerance = 1 << 50
)

// checkBucket reports a token bucket whose numbers lie outside the range it decides exactly.
func (l *loader) checkBucket(a at, n *yaml.Node, lim *Limit) {
	if lim.RequestsPerUnit == 0 {
		l.errf(a, n, "rate_limit.requests_per_unit", "must be at least 1 for %s (it is the refill rate)", TokenBucket)
		return
	}
	us := uint64(lim.Window.Microseconds())
	interval := (us + uint64(lim.RequestsPerUnit) - 1) / uint64(lim.RequestsPerUnit)
	if interval*uint64(lim.Burst) > maxBucketTolerance {
		l.errf(a, n, "rate_limit.burst", "a burst of %d at %d per %v is beyond what %s counts exactly (burst x window/requests_per_unit must be at most 2^50 us)", lim.Burst, lim.RequestsPerUnit, lim.Window, TokenBucket)
	}
}

// checkSlots checks a concurrency rule: 1 to MaxSlots slots, and no count_rejected (a
// refused lease holds nothing to count).
func (l *loader) checkSlots(a at, n *yaml.Node, fields fields, lim *Limit) {
	if lim.RequestsPerUnit < 1 || lim.RequestsPerUnit > MaxSlots {
		at := n
		if f, ok := fields.get("requests_per_unit"); ok {
			at = f.val
		}
		l.errf(a, at, "rate_limit.requests_per_unit", "must be from 1 to %d slots with algorithm %s, got %d", MaxSlots, Concurrency, lim.RequestsPerUnit)
	}
	if f, ok := fields.get("count_rejected"); ok && lim.CountRejected {
		l.errf(a, f.val, "rate_limit.count_rejected", "not valid with algorithm %s", Concurrency)
	}
}

// checkShared reports a priority or fair_share rule that is not on a key-only leaf: the
// request value of that entry names the class or tenant, so the rule must match every value
// (no exact or wildcard value) and be the last entry of the descriptor (no children).
func (l *loader) checkShared(a at, item *yaml.Node, fields fields, value string, n *node) {
	alg := n.limit.Algorithm
	if value != "" {
		f, _ := fields.get("value")
		l.errf(a, f.val, "value", "a %s rule must be on a key-only descriptor: every value of the key names a %s sharing the rule's one capacity", alg, memberNoun(alg))
	}
	if len(n.children) > 0 {
		f, _ := fields.get("descriptors")
		l.errf(a, f.key, "descriptors", "a %s rule must be on the last entry of a descriptor (its value names the %s), so it cannot have nested descriptors", alg, memberNoun(alg))
	}
}

func memberNoun(a Algorithm) string {
	if a == Priority {
		return "class"
	}
	return "tenant"
}

// priority reads a rate_limit.priority mapping: classes (a list of {name, share}, most
// important first) and default_class. It returns nil when the mapping has problems.
func (l *loader) priority(a at, n *yaml.Node) *PrioritySettings {
	const prefix = "rate_limit.priority"
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		l.errf(a, n, prefix, "must be a mapping with classes and default_class, got %s", describe(n))
		return nil
	}
	before := len(l.errs)
	p := &PrioritySettings{Default: -1}
	var defaultName string
	var defaultNode, classesNode *yaml.Node
	for _, f := range l.mapping(a, prefix+".", n) {
		switch f.name {
		case "default_class":
			defaultNode = f.val
			defaultName, _ = l.str(a, prefix+".default_class", f.val)
		case "classes":
			classesNode = f.val
			p.Classes = l.classes(a, f.val)
		default:
			l.unknown(a, prefix+".", f, "classes", "default_class")
		}
	}
	switch {
	case classesNode == nil:
		l.errf(a, n, prefix+".classes", "missing (want a list of {name, share}, most important first)")
	case len(p.Classes) == 0 && len(l.errs) == before:
		l.errf(a, classesNode, prefix+".classes", "must list at least one class")
	}
	if len(l.errs) > before {
		return nil
	}
	switch {
	case defaultNode == nil:
		// Traffic that names no class gets the least privilege.
		p.Default = len(p.Classes) - 1
	default:
		for i, c := range p.Classes {
			if c.Name == defaultName {
				p.Default = i
			}
		}
		if p.Default < 0 {
			names := make([]string, len(p.Classes))
			for i, c := range p.Classes {
				names[i] = c.Name
			}
			l.errf(a, defaultNode, prefix+".default_class", "%q is not one of the classes (%s)", defaultName, strings.Join(names, ", "))
			return nil
		}
	}
	return p
}

// classes reads the list of priority classes.
func (l *loader) classes(a at, n *yaml.Node) []Class {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		l.errf(a, n, "rate_limit.priority.classes", "must be a list of {name, share}, got %s", describe(n))
		return nil
	}
	var out []Class
	seen := map[string]int{}
	for i, item := range n.Content {
		item = resolve(item)
		field := fmt.Sprintf("rate_limit.priority.classes[%d]", i)
		if item.Kind != yaml.MappingNode {
			l.errf(a, item, field, "must be a mapping {name, share}, got %s", describe(item))
			continue
		}
		var c Class
		var nameNode, shareNode *yaml.Node
		ok := true
		for _, f := range l.mapping(a, field+".", item) {
			switch f.name {
			case "name":
				nameNode = f.val
				c.Name, ok = l.str(a, field+".name", f.val)
			case "share":
				shareNode = resolve(f.val)
				var share float64
				if share, ok = l.ratio(a, field+".share", shareNode); ok {
					c.Share = int64(math.Round(share * ShareUnit))
					if c.Share == 0 {
						l.errf(a, shareNode, field+".share", "must be at least 0.000001 (shares are counted in millionths), got %s", describe(shareNode))
						ok = false
					}
				}
			default:
				l.unknown(a, field+".", f, "name", "share")
				ok = false
			}
			if !ok {
				break
			}
		}
		switch {
		case !ok:
			continue
		case nameNode == nil:
			l.errf(a, item, field+".name", "missing")
			continue
		case c.Name == "":
			l.errf(a, nameNode, field+".name", "must not be empty")
			continue
		case shareNode == nil:
			l.errf(a, item, field+".share", "missing (want a number greater than 0 and at most 1)")
			continue
		}
		if first, dup := seen[c.Name]; dup {
			l.errf(a, nameNode, field+".name", "%q is already classes[%d]", c.Name, first)
			continue
		}
		seen[c.Name] = i
		if len(out) > 0 && c.Share > out[len(out)-1].Share {
			prev := out[len(out)-1]
			l.errf(a, shareNode, field+".share", "%s is above the share of %q before it (%s): classes are ordered most important first, so shares must not increase",
				formatShare(c.Share), prev.Name, formatShare(prev.Share))
			continue
		}
		out = append(out, c)
	}
	return out
}

func formatShare(millionths int64) string {
	return strconv.FormatFloat(float64(millionths)/ShareUnit, 'f', -1, 64)
}

// fairShare reads a rate_limit.fair_share mapping (n may be nil: every default): idle_timeout
// (a duration, default window) and weights ({tenant: integer weight}). It returns nil when
// the mapping has problems.
func (l *loader) fairShare(a at, n *yaml.Node, window time.Duration) *FairShareSettings {
	const prefix = "rate_limit.fair_share"
	f := &FairShareSettings{IdleTimeout: window}
	n = resolve(n)
	if isNull(n) {
		return f
	}
	if n.Kind != yaml.MappingNode {
		l.errf(a, n, prefix, "must be a mapping with idle_timeout and weights, got %s", describe(n))
		return nil
	}
	before := len(l.errs)
	for _, fl := range l.mapping(a, prefix+".", n) {
		switch fl.name {
		case "idle_timeout":
			if v := resolve(fl.val); !isNull(v) {
				f.IdleTimeout, _ = l.duration(a, prefix+".idle_timeout", v)
			}
		case "weights":
			f.Weights = l.weights(a, fl.val)
		default:
			l.unknown(a, prefix+".", fl, "idle_timeout", "weights")
		}
	}
	if len(l.errs) > before {
		return nil
	}
	return f
}

// weights reads a mapping {tenant: weight}, weights integers from 1 to MaxWeight.
func (l *loader) weights(a at, n *yaml.Node) map[string]int64 {
	const prefix = "rate_limit.fair_share.weights"
	n = resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		l.errf(a, n, prefix, "must be a mapping {tenant: weight}, got %s", describe(n))
		return nil
	}
	out := map[string]int64{}
	for _, f := range l.mapping(a, prefix+".", n) {
		if f.name == "" {
			l.errf(a, f.key, prefix, "a tenant name must not be empty")
			continue
		}
		v := resolve(f.val)
		var w int64
		if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Decode(&w) != nil || w < 1 || w > MaxWeight {
			l.errf(a, v, prefix+"."+f.name, "must be an integer from 1 to %d, got %s", MaxWeight, describe(v))
			continue
		}
		out[f.name] = w
	}
	return out
}

// duration reads a Go duration string ("500ms", "1m30s") of whole milliseconds from 1ms to
// MaxWindow.
func (l *loader) duration(a at, name string, n *yaml.Node) (time.Duration, bool) {
	var d time.Duration
	var err error
	if n.Kind == yaml.ScalarNode {
		d, err = time.ParseDuration(n.Value)
	}
	if n.Kind != yaml.ScalarNode || err != nil || d < time.Millisecond || d > MaxWindow || d%time.Millisecond != 0 {
		l.errf(a, n, name, "must be a duration of whole milliseconds from 1ms to %v (such as 500ms or 2m), got %s", MaxWindow, describe(n))
		return 0, false
	}
	return d, true
}

// replaces reads a list of {name: X} mappings and returns the names with their nodes.
func (l *loader) replaces(a at, n *yaml.Node) ([]string, []*yaml.Node) {
	n = resolve(n)
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		l.errf(a, n, "rate_limit.replaces", "must be a list of {name: ...}, got %s", describe(n))
		return nil, nil
	}
	var names []string
	var nodes []*yaml.Node
	for i, item := range n.Content {
		item = resolve(item)
		field := fmt.Sprintf("rate_limit.replaces[%d]", i)
		if item.Kind != yaml.MappingNode {
			l.errf(a, item, field, "must be a mapping {name: ...}, got %s", describe(item))
			continue
		}
		var name string
		var nameNode *yaml.Node
		for _, f := range l.mapping(a, field+".", item) {
			if f.name != "name" {
				l.unknown(a, field+".", f, "name")
				continue
			}
			nameNode = f.val
			name, _ = l.str(a, field+".name", f.val)
		}
		switch {
		case nameNode == nil:
			l.errf(a, item, field+".name", "missing")
		case name == "":
			l.errf(a, nameNode, field+".name", "must not be empty")
		default:
			names = append(names, name)
			nodes = append(nodes, nameNode)
		}
	}
	return names, nodes
}

// parseUnit returns the unit named s, case-insensitively, or UnitUnknown.
func parseUnit(s string) Unit {
	switch strings.ToLower(s) {
	case "second":
		return UnitSecond
	case "minute":
		return UnitMinute
	case "hour":
		return UnitHour
	case "day":
		return UnitDay
	case "week":
		return UnitWeek
	case "month":
		return UnitMonth
	case "year":
		return UnitYear
	}
	return UnitUnknown
}

// field is one key/value pair of a mapping.
type field struct {
	name     string
	key, val *yaml.Node
}

type fields []field

func (fs fields) get(name string) (field, bool) {
	for _, f := range fs {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// mapping returns the fields of a mapping node in order, with YAML merge keys (<<) applied:
// explicit fields win over merged ones, earlier merged mappings over later ones. A field
// given twice is a problem; prefix is the dotted name of the mapping for messages.
func (l *loader) mapping(a at, prefix string, m *yaml.Node) fields {
	var out fields
	var merges []*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := resolve(m.Content[i]), m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			l.errf(a, k, strings.TrimSuffix(prefix, "."), "field names must be strings, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if prev, dup := out.get(k.Value); dup {
			l.errf(a, k, prefix+k.Value, "given twice (first at line %d)", prev.key.Line)
			continue
		}
		out = append(out, field{name: k.Value, key: k, val: v})
	}
	for _, src := range merges {
		src = resolve(src)
		var srcs []*yaml.Node
		switch src.Kind {
		case yaml.MappingNode:
			srcs = []*yaml.Node{src}
		case yaml.SequenceNode:
			for _, s := range src.Content {
				srcs = append(srcs, resolve(s))
			}
		}
		for _, s := range srcs {
			if s.Kind != yaml.MappingNode {
				l.errf(a, s, prefix+"<<", "a merge must name mappings, got %s", describe(s))
				continue
			}
			for _, f := range l.mapping(a, prefix, s) {
				if _, has := out.get(f.name); !has {
					out = append(out, f)
				}
			}
		}
	}
	return out
}

// unknown reports a field that is not one of known, suggesting the closest known name.
func (l *loader) unknown(a at, prefix string, f field, known ...string) {
	norm := func(s string) string { return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s)) }
	for _, k := range known {
		if norm(k) == norm(f.name) {
			l.errf(a, f.key, prefix+f.name, "unknown field (did you mean %q?)", k)
			return
		}
	}
	l.errf(a, f.key, prefix+f.name, "unknown field (want one of %s)", strings.Join(known, ", "))
}

// str reads a string; any scalar is taken as its literal text (value: 123 is "123") and
// null is the empty string.
func (l *loader) str(a at, name string, n *yaml.Node) (string, bool) {
	n = resolve(n)
	switch {
	case isNull(n):
		return "", true
	case n.Kind == yaml.ScalarNode:
		return n.Value, true
	}
	l.errf(a, n, name, "must be a string, got %s", describe(n))
	return "", false
}

// boolean reads a bool; null is false, and YAML 1.1's yes/no/on/off are accepted as yaml.v2
// (which envoyproxy/ratelimit uses) does.
func (l *loader) boolean(a at, name string, n *yaml.Node) (bool, bool) {
	n = resolve(n)
	if isNull(n) {
		return false, true
	}
	if n.Kind == yaml.ScalarNode && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
		// The booleans of YAML 1.1, which envoyproxy/ratelimit's YAML library reads.
		switch n.Value {
		case "true", "True", "TRUE", "yes", "Yes", "YES", "y", "Y", "on", "On", "ON":
			return true, true
		case "false", "False", "FALSE", "no", "No", "NO", "n", "N", "off", "Off", "OFF":
			return false, true
		}
	}
	l.errf(a, n, name, "must be true or false (unquoted), got %s", describe(n))
	return false, false
}

// uint32 reads an integer in [min, MaxUint32]; null is 0.
func (l *loader) uint32(a at, name string, n *yaml.Node, min uint32) (uint32, bool) {
	n = resolve(n)
	if isNull(n) && min == 0 {
		return 0, true
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		l.errf(a, n, name, "must be an integer from %d to %d, got %s", min, uint32(math.MaxUint32), describe(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil || v < int64(min) || v > math.MaxUint32 {
		l.errf(a, n, name, "must be an integer from %d to %d, got %s", min, uint32(math.MaxUint32), n.Value)
		return 0, false
	}
	return uint32(v), true
}

// ratio reads a number in (0, 1].
func (l *loader) ratio(a at, name string, n *yaml.Node) (float64, bool) {
	var v float64
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || (tag != "!!float" && tag != "!!int") || n.Decode(&v) != nil || !(v > 0 && v <= 1) {
		l.errf(a, n, name, "must be a number greater than 0 and at most 1, got %s", describe(n))
		return 0, false
	}
	return v, true
}

// resolve follows aliases to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names a node's kind, or quotes a scalar, for messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return strconv.Quote(n.Value)
	}
	return "an unsupported node"
}
