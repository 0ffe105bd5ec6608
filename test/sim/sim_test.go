package main

import (
	"context"
	"testing"
)

// TestScenarios runs the scenarios the plots in docs/ show and checks their numbers.
func TestScenarios(t *testing.T) {
	results := map[string]*tally{}
	for _, sc := range scenarios() {
		tl, err := run(context.Background(), sc)
		if err != nil {
			t.Fatal(err)
		}
		results[sc.name] = tl
		// No second ever admits more than the capacity.
		for s := range tl.admitted[0] {
			total := 0
			for i := range sc.flows {
				total += tl.admitted[i][s]
			}
			if total > int(sc.capacity) {
				t.Errorf("%s, second %d: %d admitted, above the capacity of %d", sc.name, s, total, sc.capacity)
			}
		}
	}

	t.Run("priority", func(t *testing.T) {
		tl := results["priority"]
		const critical, normal, sheddable = 0, 1, 2
		for s := range 40 {
			if tl.admitted[critical][s] != tl.offered[critical][s] {
				t.Errorf("second %d: critical admitted %d of %d, want all", s, tl.admitted[critical][s], tl.offered[critical][s])
			}
			low := s < 10 || s >= 31 // 40% of the capacity: below every share
			if low && (tl.admitted[normal][s] != tl.offered[normal][s] || tl.admitted[sheddable][s] != tl.offered[sheddable][s]) {
				t.Errorf("second %d at 40%%: default %d of %d, sheddable %d of %d, want all", s,
					tl.admitted[normal][s], tl.offered[normal][s], tl.admitted[sheddable][s], tl.offered[sheddable][s])
			}
			// At 150%, sheddable is shed first: nothing once the first second has filled the
			// window, while default keeps most of the 80 - 30 it may use beside critical.
			if s >= 11 && s < 30 && (tl.admitted[sheddable][s] != 0 || tl.admitted[normal][s] < 44 || tl.admitted[normal][s] > 50) {
				t.Errorf("second %d at 150%%: default %d, sheddable %d; want 44 to 50 and 0", s, tl.admitted[normal][s], tl.admitted[sheddable][s])
			}
		}
		if tl.shed[sheddable] == 0 || tl.shed[normal] == 0 || tl.over[critical] != 0 {
			t.Errorf("refusals: shed %v, over the limit %v; want default and sheddable shed, critical never refused", tl.shed, tl.over)
		}
	})

	t.Run("fair_share_greedy", func(t *testing.T) {
		tl := results["fair_share_greedy"]
		for s := range 20 {
			want := 100 // alone: the whole pool
			if s >= 5 {
				want = 20 // what the polite tenants leave
				for p := 1; p <= 4; p++ {
					if tl.admitted[p][s] != tl.offered[p][s] || tl.offered[p][s] != 20 {
						t.Errorf("second %d: polite-%d admitted %d of %d, want all of 20", s, p, tl.admitted[p][s], tl.offered[p][s])
					}
				}
			}
			if tl.admitted[0][s] != want {
				t.Errorf("second %d: greedy admitted %d, want %d", s, tl.admitted[0][s], want)
			}
		}
		if tl.shed[0] == 0 {
			t.Errorf("greedy was never shed: %v", tl.shed)
		}
	})

	t.Run("fair_share_idle", func(t *testing.T) {
		tl := results["fair_share_idle"]
		const a, b, c = 0, 1, 2
		third := func(s, i int) {
			if n := tl.admitted[i][s]; n < 33 || n > 34 {
				t.Errorf("second %d: tenant %d admitted %d, want a third of the pool (33 or 34)", s, i, n)
			}
		}
		for s := range 30 {
			switch {
			case s < 10 || s >= 21:
				third(s, a)
				third(s, b)
				third(s, c)
			case s >= 11 && s < 20: // c has left the active set: a and b share the pool
				if tl.admitted[a][s] != 50 || tl.admitted[b][s] != 50 {
					t.Errorf("second %d: a %d, b %d, want 50 each", s, tl.admitted[a][s], tl.admitted[b][s])
				}
			}
		}
		// c comes back half way through second 20: within its share of what remains.
		if tl.admitted[c][20] != tl.offered[c][20] {
			t.Errorf("second 20: c admitted %d of %d, want all", tl.admitted[c][20], tl.offered[c][20])
		}
	})
}
