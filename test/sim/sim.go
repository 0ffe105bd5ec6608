// Command sim replays traffic mixes against the priority and fair_share Lua scripts (on
// miniredis, whose clock the simulation sets for every request) and writes, for each
// scenario, a CSV of the requests offered and admitted per flow and per second, and a PNG plot
// of the admitted rates:
//
//	go run ./test/sim -out docs
//
// The scenarios:
//   - priority: three classes (critical 100%, default 80%, sheddable 50% of 100 a second),
//     offered 40% of the capacity, then 150%, then 40% again;
//   - fair_share_greedy: one greedy tenant alone on a pool of 100 a second, then four polite
//     tenants asking for their fair share (20 a second each) beside it;
//   - fair_share_idle: three tenants asking for more than the pool; one goes idle for ten
//     seconds and comes back.
//
// The test in this directory runs the same scenarios and checks the numbers the plots show.
package main

import (
	"cmp"
	"context"
	"encoding/csv"
	"flag"
	"fmt"
	"image/color"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/ratelimitd/ratelimitd/algorithms"
	"github.com/ratelimitd/ratelimitd/storage"
)

// epoch is the simulations' time zero, a whole day, so every window is aligned to it.
var epoch = time.Unix(1_700_006_400, 0)

// phase is a constant offered rate, in requests per second, over [from, to).
type phase struct {
	from, to time.Duration
	rate     float64
}

// flow is one class or tenant: its offered traffic and how each of its requests is decided.
type flow struct {
	name   string
	phases []phase
	req    algorithms.Request
}

// scenario is one simulation: flows on one key, decided for span, tallied per second.
type scenario struct {
	name     string
	title    string
	capacity int64
	span     time.Duration
	flows    []flow
}

// tally is what each flow was offered and admitted, per second of the scenario.
type tally struct {
	offered, admitted [][]int // [flow][second]
	// shed and over count the refusals graded shed and over the limit, per flow.
	shed, over []int
}

func scenarios() []scenario {
	const s = time.Second
	pr := func(share int64) algorithms.Request {
		return algorithms.Request{Algorithm: algorithms.Priority, Key: "{sim}priority", Limit: 100, Window: s, Hits: 1, Share: share}
	}
	fs := func(key, tenant string) algorithms.Request {
		return algorithms.Request{Algorithm: algorithms.FairShare, Key: key, Limit: 100, Window: s, Hits: 1, Member: tenant}
	}
	// 40% of the capacity, 150% from 10s to 30s, 40% again.
	load := func(low, high float64) []phase {
		return []phase{{0, 10 * s, low}, {10 * s, 30 * s, high}, {30 * s, 40 * s, low}}
	}
	polite := func(i int) flow {
		name := fmt.Sprintf("polite-%d", i)
		return flow{name, []phase{{5 * s, 20 * s, 20}}, fs("{sim}greedy", name)}
	}
	greedy := func(name string, phases ...phase) flow { return flow{name, phases, fs("{sim}idle", name)} }
	return []scenario{
		{
			name:     "priority",
			title:    "priority: 100/s shared by three classes, offered 40%, then 150%, then 40%",
			capacity: 100, span: 40 * s,
			flows: []flow{
				{"critical (share 1.0)", load(10, 30), pr(1_000_000)},
				{"default (share 0.8)", load(15, 60), pr(800_000)},
				{"sheddable (share 0.5)", load(15, 60), pr(500_000)},
			},
		},
		{
			name:     "fair_share_greedy",
			title:    "fair_share: a pool of 100/s, one greedy tenant (200/s), four polite ones (20/s from 5s)",
			capacity: 100, span: 20 * s,
			flows: []flow{
				{"greedy", []phase{{0, 20 * s, 200}}, fs("{sim}greedy", "greedy")},
				polite(1), polite(2), polite(3), polite(4),
			},
		},
		{
			name:     "fair_share_idle",
			title:    "fair_share: three tenants asking 60/s of a pool of 100/s; c is idle from 10s to 20.5s",
			capacity: 100, span: 30 * s,
			flows: []flow{
				greedy("a", phase{0, 30 * s, 60}),
				greedy("b", phase{0, 30 * s, 60}),
				greedy("c", phase{0, 10 * s, 60}, phase{20*s + 500*time.Millisecond, 30 * s, 60}),
			},
		},
	}
}

// arrival is one request of a flow.
type arrival struct {
	at   time.Duration
	flow int
}

// arrivals spreads each flow's requests evenly over its phases; flow i is offset by i×100µs so
// that no two flows arrive at once.
func arrivals(sc scenario) []arrival {
	var out []arrival
	for i, f := range sc.flows {
		for _, ph := range f.phases {
			period := time.Duration(float64(time.Second) / ph.rate)
			for at := ph.from + time.Duration(i)*100*time.Microsecond; at < ph.to; at += period {
				out = append(out, arrival{at, i})
			}
		}
	}
	slices.SortStableFunc(out, func(a, b arrival) int { return cmp.Compare(a.at, b.at) })
	return out
}

// run replays a scenario against the scripts on a fresh miniredis.
func run(ctx context.Context, sc scenario) (*tally, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		return nil, err
	}
	defer mr.Close()
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer c.Close()
	d := algorithms.NewRedis(storage.NewRedis(c))

	seconds := int(sc.span / time.Second)
	tl := &tally{shed: make([]int, len(sc.flows)), over: make([]int, len(sc.flows))}
	for range sc.flows {
		tl.offered = append(tl.offered, make([]int, seconds))
		tl.admitted = append(tl.admitted, make([]int, seconds))
	}
	for _, a := range arrivals(sc) {
		mr.SetTime(epoch.Add(a.at))
		res, err := d.Decide(ctx, []algorithms.Request{sc.flows[a.flow].req})
		if err != nil {
			return nil, fmt.Errorf("%s at %v: %w", sc.name, a.at, err)
		}
		sec := int(a.at / time.Second)
		tl.offered[a.flow][sec]++
		switch r := res[0]; {
		case r.Allowed:
			tl.admitted[a.flow][sec]++
		case r.Shed:
			tl.shed[a.flow]++
		default:
			tl.over[a.flow]++
		}
	}
	return tl, nil
}

// writeCSV writes one row per second: t_s, then <flow>_offered and <flow>_admitted per flow.
func writeCSV(path string, sc scenario, tl *tally) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	head := []string{"t_s"}
	for _, fl := range sc.flows {
		head = append(head, fl.name+" offered", fl.name+" admitted")
	}
	_ = w.Write(head)
	for s := range tl.offered[0] {
		row := []string{strconv.Itoa(s)}
		for i := range sc.flows {
			row = append(row, strconv.Itoa(tl.offered[i][s]), strconv.Itoa(tl.admitted[i][s]))
		}
		_ = w.Write(row)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var palette = []color.RGBA{
	{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
	{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
	{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
	{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
	{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, // purple
}

// writePNG plots the admitted rate of every flow, their total and the capacity over time. Each
// second's count is drawn over that second, as a step.
func writePNG(path string, sc scenario, tl *tally) error {
	p := plot.New()
	p.Title.Text = sc.title
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = "admitted requests per second"
	p.Legend.Top = true
	p.Legend.Left = true
	p.Y.Min, p.Y.Max = 0, float64(sc.capacity)*1.5 // room for the legend above the capacity
	step := func(counts []int) plotter.XYs {
		xy := make(plotter.XYs, 0, 2*len(counts))
		for s, n := range counts {
			xy = append(xy, plotter.XY{X: float64(s), Y: float64(n)}, plotter.XY{X: float64(s + 1), Y: float64(n)})
		}
		return xy
	}
	total := make([]int, len(tl.admitted[0]))
	for i, fl := range sc.flows {
		for s, n := range tl.admitted[i] {
			total[s] += n
		}
		l, err := plotter.NewLine(step(tl.admitted[i]))
		if err != nil {
			return err
		}
		l.Color = palette[i%len(palette)]
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fl.name, l)
	}
	l, err := plotter.NewLine(step(total))
	if err != nil {
		return err
	}
	l.Color = color.Gray{Y: 0x40}
	l.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	p.Add(l)
	p.Legend.Add("total admitted", l)
	capacity := plotter.NewFunction(func(float64) float64 { return float64(sc.capacity) })
	capacity.Color = color.Gray{Y: 0x99}
	capacity.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
	p.Add(capacity)
	p.Legend.Add("capacity", capacity)
	p.Add(plotter.NewGrid())
	return p.Save(9*vg.Inch, 4.5*vg.Inch, path)
}

func main() {
	out := flag.String("out", "docs", "directory for the CSV and PNG files")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	for _, sc := range scenarios() {
		tl, err := run(ctx, sc)
		if err != nil {
			log.Fatal(err)
		}
		base := filepath.Join(*out, "sim_"+sc.name)
		if err := writeCSV(base+".csv", sc, tl); err != nil {
			log.Fatal(err)
		}
		if err := writePNG(base+".png", sc, tl); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %s.csv, %s.png\n", sc.name, base, base)
	}
}
