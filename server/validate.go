package server

import (
	"fmt"
	"math"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"

	"github.com/ratelimitd/ratelimitd/config"
)

// Request bounds. A request beyond them is refused with InvalidArgument before anything is
// looked up or charged.
const (
	MaxDescriptors = 64
	MaxEntries     = 64
	MaxStringBytes = 4 << 10
)

// validateRequest checks everything ShouldRateLimit relies on, so that the decision path never
// meets a request it cannot handle. The error names the offending field.
func validateRequest(req *rlsv3.RateLimitRequest) error {
	switch {
	case req.GetDomain() == "":
		return fmt.Errorf("domain: must not be empty")
	case len(req.GetDomain()) > MaxStringBytes:
		return fmt.Errorf("domain: longer than %d bytes", MaxStringBytes)
	case len(req.GetDescriptors()) == 0:
		return fmt.Errorf("descriptors: at least one is required")
	case len(req.GetDescriptors()) > MaxDescriptors:
		return fmt.Errorf("descriptors: %d given, at most %d allowed", len(req.GetDescriptors()), MaxDescriptors)
	}
	for i, d := range req.GetDescriptors() {
		if err := validateDescriptor(d); err != nil {
			return fmt.Errorf("descriptors[%d].%w", i, err)
		}
	}
	return nil
}

func validateDescriptor(d *ratelimitv3.RateLimitDescriptor) error {
	if d == nil {
		return fmt.Errorf("entries: descriptor is empty")
	}
	switch n := len(d.GetEntries()); {
	case n == 0:
		return fmt.Errorf("entries: at least one is required")
	case n > MaxEntries:
		return fmt.Errorf("entries: %d given, at most %d allowed", n, MaxEntries)
	}
	for j, e := range d.GetEntries() {
		switch {
		case e.GetKey() == "":
			return fmt.Errorf("entries[%d].key: must not be empty", j)
		case len(e.GetKey()) > MaxStringBytes:
			return fmt.Errorf("entries[%d].key: longer than %d bytes", j, MaxStringBytes)
		case len(e.GetValue()) > MaxStringBytes:
			return fmt.Errorf("entries[%d].value: longer than %d bytes", j, MaxStringBytes)
		}
	}
	if h := d.GetHitsAddend(); h != nil && h.GetValue() > math.MaxUint32 {
		return fmt.Errorf("hits_addend: %d is above %d", h.GetValue(), uint32(math.MaxUint32))
	}
	if o := d.GetLimit(); o != nil {
		if overrideUnit(o.GetUnit()) == config.UnitUnknown {
			return fmt.Errorf("limit.unit: %s is not a valid unit", o.GetUnit())
		}
		if m := o.GetUnitMultiplier(); m != nil {
			switch unit := overrideUnit(o.GetUnit()).Duration(); {
			case m.GetValue() == 0:
				return fmt.Errorf("limit.unit_multiplier: must be at least 1")
			case time.Duration(m.GetValue()) > config.MaxWindow/unit:
				return fmt.Errorf("limit.unit_multiplier: a window of %d %s is longer than %v", m.GetValue(), o.GetUnit(), config.MaxWindow)
			}
		}
	}
	return nil
}

// overrideUnit maps the unit of a request-side override; anything else is UnitUnknown.
func overrideUnit(u typev3.RateLimitUnit) config.Unit {
	switch u {
	case typev3.RateLimitUnit_SECOND:
		return config.UnitSecond
	case typev3.RateLimitUnit_MINUTE:
		return config.UnitMinute
	case typev3.RateLimitUnit_HOUR:
		return config.UnitHour
	case typev3.RateLimitUnit_DAY:
		return config.UnitDay
	case typev3.RateLimitUnit_MONTH:
		return config.UnitMonth
	case typev3.RateLimitUnit_YEAR:
		return config.UnitYear
	}
	return config.UnitUnknown
}

// overrideLimit applies a request-side override to the matched limit (nil when config has no
// match). Like envoyproxy/ratelimit, an override is never in shadow mode and has no name; it
// keeps the matched rule's algorithm and settings, with the token bucket's burst following
// the new rate.
func overrideLimit(matched *config.Limit, o *ratelimitv3.RateLimitDescriptor_RateLimitOverride) *config.Limit {
	l := config.Limit{
		Path:           "override",
		Algorithm:      config.FixedWindow,
		NearLimitRatio: config.DefaultNearLimitRatio,
	}
	if matched != nil {
		l = *matched
		l.Name, l.Replaces, l.ShadowMode, l.Unlimited = "", nil, false, false
	}
	l.RequestsPerUnit = o.GetRequestsPerUnit()
	l.Unit = overrideUnit(o.GetUnit())
	l.UnitMultiplier = 1
	if m := o.GetUnitMultiplier(); m != nil {
		l.UnitMultiplier = m.GetValue()
	}
	l.Window = l.Unit.Duration() * time.Duration(l.UnitMultiplier)
	if l.Algorithm == config.TokenBucket {
		l.Burst = l.RequestsPerUnit
	}
	return &l
}
