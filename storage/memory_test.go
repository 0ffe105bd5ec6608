package storage

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ratelimitd/ratelimitd/test/testclock"
)

func get(m *Memory, key string) []int64 {
	var got []int64
	m.Update(key, func(_ time.Time, s []int64) ([]int64, time.Duration) {
		got = append([]int64(nil), s...)
		if s == nil {
			return nil, 0
		}
		return s, time.Hour // unchanged state; the ttl is not what this test checks
	})
	return got
}

func TestMemoryUpdate(t *testing.T) {
	clk := testclock.New(time.Unix(1000, 0))
	m := NewMemory(MemoryOptions{Now: clk.Now})
	m.Update("k", func(now time.Time, s []int64) ([]int64, time.Duration) {
		if !now.Equal(clk.Now()) {
			t.Errorf("fn got now %v, want the store's clock %v", now, clk.Now())
		}
		if s != nil {
			t.Errorf("absent key: got state %v, want nil", s)
		}
		return []int64{7, 8}, time.Second
	})
	clk.Add(999 * time.Millisecond)
	m.Update("k", func(_ time.Time, s []int64) ([]int64, time.Duration) {
		if len(s) != 2 || s[0] != 7 || s[1] != 8 {
			t.Errorf("got state %v, want [7 8]", s)
		}
		s[1]++ // in place
		return s, time.Second
	})
	clk.Add(999 * time.Millisecond)
	if got := get(m, "k"); len(got) != 2 || got[1] != 9 {
		t.Errorf("got %v, want [7 9]", got)
	}
	clk.Add(time.Hour)
	if got := get(m, "k"); got != nil {
		t.Errorf("expired key: got %v, want nil", got)
	}
	if n := m.Len(); n != 0 {
		t.Errorf("expired key read: Len %d, want 0", n)
	}

	for _, del := range []func(time.Time, []int64) ([]int64, time.Duration){
		func(time.Time, []int64) ([]int64, time.Duration) { return nil, time.Second },
		func(time.Time, []int64) ([]int64, time.Duration) { return []int64{1}, 0 },
		func(time.Time, []int64) ([]int64, time.Duration) { return []int64{1}, -time.Second },
	} {
		m.Update("d", func(time.Time, []int64) ([]int64, time.Duration) { return []int64{1}, time.Second })
		m.Update("d", del)
		if got := get(m, "d"); got != nil {
			t.Errorf("deleted key: got %v, want nil", got)
		}
	}
}

// TestMemoryBounded inserts 100k short-lived keys over advancing time: expired keys must be
// reclaimed without a background goroutine.
func TestMemoryBounded(t *testing.T) {
	clk := testclock.New(time.Unix(1000, 0))
	m := NewMemory(MemoryOptions{Now: clk.Now})
	const ttl = 100 * time.Millisecond
	const perMs = 10 // 10 inserts per ms with a 100ms TTL: about 1000 live keys
	worst := 0
	for i := range 100_000 {
		if i%perMs == 0 {
			clk.Add(time.Millisecond)
		}
		m.Update("key-"+strconv.Itoa(i), func(time.Time, []int64) ([]int64, time.Duration) {
			return []int64{int64(i)}, ttl
		})
		if i%1000 == 999 {
			worst = max(worst, m.Len())
		}
	}
	live := int(ttl/time.Millisecond) * perMs
	if worst > 2*live {
		t.Errorf("up to %d entries held, with about %d live: expired keys are not reclaimed", worst, live)
	}
	t.Logf("live keys about %d, entries held at most %d", live, worst)
}

func TestMemoryConcurrent(t *testing.T) {
	m := NewMemory(MemoryOptions{})
	const goroutines, each = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				for _, key := range []string{"shared", "own-" + strconv.Itoa(g), "k" + strconv.Itoa(i%50)} {
					m.Update(key, func(_ time.Time, s []int64) ([]int64, time.Duration) {
						if s == nil {
							s = make([]int64, 1)
						}
						s[0]++
						return s, time.Hour
					})
				}
			}
		})
	}
	wg.Wait()
	if got := get(m, "shared"); len(got) != 1 || got[0] != goroutines*each {
		t.Errorf("shared counter: got %v, want %d", got, goroutines*each)
	}
}

func BenchmarkMemoryUpdate(b *testing.B) {
	m := NewMemory(MemoryOptions{})
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			m.Update(keys[i%len(keys)], func(_ time.Time, s []int64) ([]int64, time.Duration) {
				if s == nil {
					s = make([]int64, 1)
				}
				s[0]++
				return s, time.Minute
			})
			i++
		}
	})
}

// TestMemoryPeek checks that Peek sees what Update stored, treats an expired entry as absent,
// and changes neither the state nor its expiry.
func TestMemoryPeek(t *testing.T) {
	clk := testclock.New(time.Unix(1000, 0))
	m := NewMemory(MemoryOptions{Now: clk.Now})
	peek := func(key string) []int64 {
		var got []int64
		m.Peek(key, func(now time.Time, s []int64) {
			if !now.Equal(clk.Now()) {
				t.Errorf("fn got now %v, want the store's clock %v", now, clk.Now())
			}
			got = append([]int64(nil), s...)
		})
		return got
	}
	if got := peek("k"); got != nil {
		t.Errorf("absent key: got %v, want nil", got)
	}
	if n := m.Len(); n != 0 {
		t.Errorf("Peek of an absent key stored something: Len %d, want 0", n)
	}
	m.Update("k", func(time.Time, []int64) ([]int64, time.Duration) { return []int64{7, 8}, time.Second })
	e := m.shards[shardOf("k")].entries["k"]
	clk.Add(999 * time.Millisecond)
	if got := peek("k"); len(got) != 2 || got[0] != 7 || got[1] != 8 {
		t.Errorf("got %v, want [7 8]", got)
	}
	if after := m.shards[shardOf("k")].entries["k"]; after.expires != e.expires || &after.state[0] != &e.state[0] {
		t.Errorf("Peek changed the entry: expiry %d -> %d", e.expires, after.expires)
	}
	clk.Add(time.Millisecond) // the expiry: gone
	if got := peek("k"); got != nil {
		t.Errorf("expired key: got %v, want nil", got)
	}
}
