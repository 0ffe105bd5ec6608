package server

import (
	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/config"
)

// Grade is how a descriptor (or a whole request) fared. Grades are ordered: a request's grade
// is the worst of its descriptors' grades.
type Grade int

// Grades, from best to worst.
const (
	// GradeOK is well within the limit.
	GradeOK Grade = iota
	// GradeNearLimit is admitted with usage at or above the rule's near_limit_ratio.
	GradeNearLimit
	// GradeShed is refused to protect higher priority classes or tenants below their fair
	// share: capacity remains for them. It carries a retry-after.
	GradeShed
	// GradeOverLimit is refused because the limit is spent; it carries a retry-after.
	GradeOverLimit
	// GradeNever is refused because the cost can never fit the limit; retrying is pointless.
	GradeNever
)

// String returns the grade as it appears in metadata and metrics.
func (g Grade) String() string {
	switch g {
	case GradeNearLimit:
		return "near_limit"
	case GradeShed:
		return "shed"
	case GradeOverLimit:
		return "over_limit"
	case GradeNever:
		return "never"
	}
	return "ok"
}

// Refused reports whether the grade refuses the request.
func (g Grade) Refused() bool { return g >= GradeShed }

// gradeOf grades one algorithm result against its limit.
func gradeOf(l *config.Limit, r algorithms.Result) Grade {
	switch {
	case r.Never:
		return GradeNever
	case !r.Allowed && r.Shed:
		return GradeShed
	case !r.Allowed:
		return GradeOverLimit
	case r.Limit > 0 && float64(r.Limit-r.Remaining) >= l.NearLimitRatio*float64(r.Limit):
		return GradeNearLimit
	}
	return GradeOK
}
