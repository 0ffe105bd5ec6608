package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ratelimitd/ratelimitd/config"
)

// metrics are the server's Prometheus collectors. No label carries a descriptor value, and the
// domain label only takes configured domains (anything else is "other"), so cardinality stays
// bounded whatever callers send.
type metrics struct {
	decisions      *prometheus.CounterVec
	invalid        prometheus.Counter
	storageSeconds *prometheus.HistogramVec
	storageErrors  *prometheus.CounterVec
	reloads        *prometheus.CounterVec
	rules          prometheus.Gauge
	// degraded counts descriptors answered by their failure mode, by mode.
	degraded map[config.FailureMode]prometheus.Counter
	// storage holds the resolved series of each op ("decide", "refund"), so the hot path does
	// no label lookup.
	storage map[string]storageSeries
}

type storageSeries struct {
	seconds prometheus.Observer
	errors  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimitd_decisions_total",
			Help: "Answered rate-limit requests by domain and overall grade.",
		}, []string{"domain", "grade"}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ratelimitd_invalid_requests_total",
			Help: "Requests refused with InvalidArgument.",
		}),
		storageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ratelimitd_storage_duration_seconds",
			Help:    "Latency of one batch of decisions on the store (op: decide or refund).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"op"}),
		storageErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimitd_storage_errors_total",
			Help: "Batches of decisions that failed on the store (op: decide or refund).",
		}, []string{"op"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ratelimitd_config_reloads_total",
			Help: "Configuration reloads by result (ok, error). A failed reload keeps the old rules.",
		}, []string{"result"}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ratelimitd_config_rules",
			Help: "Descriptor rules carrying a rate_limit in the configuration in force.",
		}),
	}
	degraded := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ratelimitd_degraded_decisions_total",
		Help: "Limited descriptors answered by their rule's failure_mode (allow, deny or local) while the store failed.",
	}, []string{"mode"})
	m.degraded = make(map[config.FailureMode]prometheus.Counter)
	for _, mode := range failureModes {
		m.degraded[mode] = degraded.WithLabelValues(string(mode))
	}
	m.storage = make(map[string]storageSeries)
	for _, op := range []string{"decide", "refund"} {
		m.storage[op] = storageSeries{m.storageSeconds.WithLabelValues(op), m.storageErrors.WithLabelValues(op)}
	}
	// Both results exist from the start, at zero, so alerts need no absent() guard.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	if reg != nil {
		reg.MustRegister(m.decisions, m.invalid, m.storageSeconds, m.storageErrors, m.reloads, m.rules, degraded)
	}
	return m
}
