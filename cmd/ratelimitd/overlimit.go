package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ratelimitd/ratelimitd/algorithms"
)

// withOverLimitCache puts an over-limit cache of size keys in front of d and registers its
// counters on reg.
func withOverLimitCache(d algorithms.Decider, size int, reg prometheus.Registerer, log *zap.Logger) algorithms.Decider {
	c := algorithms.NewOverLimitCache(d, algorithms.OverLimitCacheOptions{Size: size})
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ratelimitd_overlimit_cache_hits_total",
			Help: "Limited descriptors refused from the over-limit cache, without a storage call.",
		}, func() float64 { return float64(c.Stats().Hits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ratelimitd_overlimit_cache_misses_total",
			Help: "Limited descriptors the over-limit cache could have answered but sent to storage (key not remembered, expired, or another limit).",
		}, func() float64 { return float64(c.Stats().Misses) }),
	)
	log.Info("over-limit cache on", zap.Int("size", size))
	return c
}
