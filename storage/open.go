package storage

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Topology defaults.
const (
	// DefaultDialTimeout bounds one connection attempt to a Redis server.
	DefaultDialTimeout = time.Second
	// DefaultHeartbeatFrequency is how often a ring checks each of its shards. go-redis takes
	// a shard out of the ring after 3 failed checks in a row (so 1 to 1.5s after it dies) and
	// puts it back after one good check (within 0.5s of its return).
	DefaultHeartbeatFrequency = 500 * time.Millisecond
)

// Options describe a Redis deployment. Exactly one of URL, Shards, Cluster and
// SentinelMaster is set. The zero values of the other fields are the defaults.
type Options struct {
	// URL is a single server: redis://[user:password@]host:port/db, or rediss:// for TLS.
	URL string
	// Shards are independent servers (host:port) behind a consistent-hash ring (redis.Ring,
	// rendezvous hashing). Each shard is named by its address, so the owner of a key depends
	// only on the set of addresses, not on their order.
	Shards []string
	// Cluster are seed addresses (host:port) of a Redis Cluster.
	Cluster []string
	// SentinelMaster is the name of the primary the Sentinels (host:port) watch.
	SentinelMaster string
	Sentinels      []string

	// Username and Password authenticate to every data node (for a URL, they may also be in
	// the URL, but not in both places). Sentinels themselves are contacted without AUTH.
	Username string
	Password string
	// TLS, when non-nil, is used for every connection (a rediss:// URL without it uses TLS
	// with the system's roots).
	TLS *tls.Config

	// DialTimeout bounds one connection attempt; DefaultDialTimeout when zero.
	DialTimeout time.Duration
	// HeartbeatFrequency is how often a ring checks its shards; DefaultHeartbeatFrequency
	// when zero.
	HeartbeatFrequency time.Duration
	// OnShardHealth, when set, is called from a ring's health check each time a shard's
	// answer changes: err is why it stopped answering, or nil when it answers again. (The
	// ring itself takes a shard out only after 3 failed checks in a row.)
	OnShardHealth func(addr string, err error)

	// Breaker skips each server (the single server, a ring's shard, a cluster's node, a
	// sentinel-managed primary) that keeps failing, so that calls to it fail fast for a short,
	// growing interval; nil installs NewBreaker(BreakerOptions{}). NoBreaker installs none.
	Breaker   *Breaker
	NoBreaker bool
}

// Open returns a client for the deployment opts describe. Whatever the topology, the client
// honours context deadlines (ContextTimeoutEnabled), so a dead or stalled server cannot hold a
// request past its deadline; it never retries a command that may have run (a decision must
// not run twice; a Redis Cluster still follows MOVED and ASK redirects); and a failed dial is
// not retried (the next request dials again). Open does not connect: an unreachable
// deployment is an error of the first call, not of Open.
func Open(opts Options) (redis.UniversalClient, error) {
	var set []string
	for _, t := range []struct {
		name string
		on   bool
	}{
		{"URL", opts.URL != ""},
		{"Shards", len(opts.Shards) > 0},
		{"Cluster", len(opts.Cluster) > 0},
		{"SentinelMaster", opts.SentinelMaster != "" || len(opts.Sentinels) > 0},
	} {
		if t.on {
			set = append(set, t.name)
		}
	}
	switch len(set) {
	case 0:
		return nil, errors.New("no Redis topology given")
	case 1:
	default:
		return nil, fmt.Errorf("more than one Redis topology given (%s)", strings.Join(set, ", "))
	}
	dial := opts.DialTimeout
	if dial <= 0 {
		dial = DefaultDialTimeout
	}
	for _, list := range [][]string{opts.Shards, opts.Cluster, opts.Sentinels} {
		if err := checkAddrs(list); err != nil {
			return nil, err
		}
	}
	breaker := opts.Breaker
	if breaker == nil && !opts.NoBreaker {
		breaker = NewBreaker(BreakerOptions{})
	}
	if opts.NoBreaker {
		breaker = nil
	}
	// newClient builds the client of one server, guarded by the breaker.
	newClient := func(o *redis.Options) *redis.Client {
		c := redis.NewClient(o)
		if breaker != nil {
			breaker.install(c)
		}
		return c
	}

	switch {
	case opts.URL != "":
		o, err := parseURL(opts.URL)
		if err != nil {
			return nil, err
		}
		if opts.Username != "" || opts.Password != "" {
			if o.Username != "" || o.Password != "" {
				return nil, errors.New("credentials both in the URL and given apart: give them once")
			}
			o.Username, o.Password = opts.Username, opts.Password
		}
		if opts.TLS != nil {
			o.TLSConfig = opts.TLS.Clone()
		}
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1 // go-redis reads 0 as "the default, 3"; -1 means none.
		if o.DialTimeout == 0 || opts.DialTimeout > 0 {
			o.DialTimeout = dial
		}
		if o.DialerRetries == 0 {
			o.DialerRetries = 1 // one attempt per dial, not 5 with backoff: fail fast when down
		}
		return newClient(o), nil

	case len(opts.Shards) > 0:
		addrs := make(map[string]string, len(opts.Shards))
		for _, a := range opts.Shards {
			if _, dup := addrs[a]; dup {
				return nil, fmt.Errorf("shard %s listed twice", a)
			}
			addrs[a] = a
		}
		freq := opts.HeartbeatFrequency
		if freq <= 0 {
			freq = DefaultHeartbeatFrequency
		}
		return redis.NewRing(&redis.RingOptions{
			Addrs:                 addrs,
			HeartbeatFrequency:    freq,
			HeartbeatFn:           heartbeat(freq, opts.OnShardHealth),
			Username:              opts.Username,
			Password:              opts.Password,
			TLSConfig:             opts.TLS,
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			DialTimeout:           dial,
			DialerRetries:         1,
			NewClient:             newClient,
		}), nil

	case len(opts.Cluster) > 0:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:                 opts.Cluster,
			Username:              opts.Username,
			Password:              opts.Password,
			TLSConfig:             opts.TLS,
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			DialTimeout:           dial,
			DialerRetries:         1,
			NewClient:             newClient,
		}), nil

	default:
		if opts.SentinelMaster == "" || len(opts.Sentinels) == 0 {
			return nil, errors.New("sentinel: want a master name and at least one sentinel address")
		}
		c := redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:            opts.SentinelMaster,
			SentinelAddrs:         opts.Sentinels,
			Username:              opts.Username,
			Password:              opts.Password,
			TLSConfig:             opts.TLS,
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			DialTimeout:           dial,
			DialerRetries:         1,
		})
		if breaker != nil {
			c.AddHook(breaker.hook("primary of " + opts.SentinelMaster))
		}
		return c, nil
	}
}

// NewClient returns a client for a redis:// or rediss:// URL (see redis.ParseURL for the
// query options): Open(Options{URL: url}).
func NewClient(url string) (redis.UniversalClient, error) {
	return Open(Options{URL: url})
}

// parseURL parses a redis:// or rediss:// URL; its errors never show the password.
func parseURL(url string) (*redis.Options, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		// The parser's message quotes the URL, password included: keep only its reason.
		var uerr *neturl.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		if strings.Contains(err.Error(), "scheme") || !strings.Contains(url, "://") {
			err = fmt.Errorf("%w (want redis://[user:password@]host:port/db or rediss://...)", err)
		}
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	if err := checkAddr(o.Addr); err != nil {
		return nil, fmt.Errorf("parse redis url: %w", err)
	}
	return o, nil
}

// heartbeat returns a ring's health check: a PING bounded by the check interval (a stalled
// shard must not delay the checks of the others), reporting changes to onChange.
func heartbeat(freq time.Duration, onChange func(addr string, err error)) func(context.Context, *redis.Client) bool {
	var mu sync.Mutex
	failing := map[string]bool{}
	return func(ctx context.Context, c *redis.Client) bool {
		ctx, cancel := context.WithTimeout(ctx, freq)
		defer cancel()
		err := c.Ping(ctx).Err()
		if onChange != nil {
			addr := c.Options().Addr
			mu.Lock()
			changed := failing[addr] != (err != nil)
			failing[addr] = err != nil
			mu.Unlock()
			if changed {
				onChange(addr, err)
			}
		}
		return err == nil
	}
}

// ParseAddrs parses a comma-separated list of host:port addresses. Every entry must have a
// host and a port in 1-65535; spaces around entries are ignored.
func ParseAddrs(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("no address given")
	}
	parts := strings.Split(s, ",")
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if err := checkAddr(p); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// ParseSentinel parses "master@host:port,host:port,...": the name of the primary the
// Sentinels watch, and their addresses.
func ParseSentinel(s string) (master string, sentinels []string, err error) {
	master, list, ok := strings.Cut(s, "@")
	master = strings.TrimSpace(master)
	if !ok || master == "" {
		return "", nil, fmt.Errorf("%q: want master@host:port[,host:port...]", s)
	}
	sentinels, err = ParseAddrs(list)
	if err != nil {
		return "", nil, err
	}
	return master, sentinels, nil
}

func checkAddrs(addrs []string) error {
	for i, a := range addrs {
		if err := checkAddr(a); err != nil {
			return fmt.Errorf("address %d: %w", i+1, err)
		}
	}
	return nil
}

// checkAddr accepts host:port with a non-empty host and a port in 1-65535.
func checkAddr(a string) error {
	if a == "" {
		return errors.New("empty address")
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: want host:port", a)
	}
	if host == "" {
		return fmt.Errorf("%q: no host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number in 1-65535", a, port)
	}
	return nil
}
