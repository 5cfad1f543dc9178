// Command benchcharts draws the charts of a tcpmd5-bench report: it reads
// the JSON that `tcpmd5-bench -json` prints (or writes with -o) and writes
// SVG charts with gonum/plot:
//
//	throughput.svg  bulk throughput of plain TCP, tcpmd5 and the x/sys
//	                baseline beside the bound MD5 hashing puts on it
//	setup.svg       connection set-up rate
//	accept.svg      accept rate against the keys installed on the listener
//	setkey.svg      SetKey cost against the keys installed on the listener
//
// Every value is the median of the run's rounds; the whiskers span the
// smallest and largest round.
//
// Usage:
//
//	go run . [-o dir] [-format svg|png] report.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The parts of a tcpmd5-bench report the charts need.
type stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

type report struct {
	Machine struct {
		CPU    string `json:"cpu"`
		CPUs   int    `json:"cpus"`
		Kernel string `json:"kernel"`
		Go     string `json:"go"`
	} `json:"machine"`
	Config struct {
		Rounds int `json:"rounds"`
	} `json:"config"`
	Setup []struct {
		Variant string `json:"variant"`
		Rate    stat   `json:"conns_per_sec"`
	} `json:"setup"`
	Throughput []struct {
		Variant string `json:"variant"`
		Conns   int    `json:"conns"`
		MBps    stat   `json:"mb_per_sec"`
	} `json:"throughput"`
	MD5 struct {
		MBps   stat `json:"mb_per_sec"`
		Bounds []struct {
			Conns int     `json:"conns"`
			MBps  float64 `json:"mb_per_sec"`
		} `json:"bounds"`
	} `json:"md5"`
	SetKey []keyed `json:"setkey"`
	Accept []keyed `json:"accept"`
}

type keyed struct {
	Variant string `json:"variant"`
	Keys    int    `json:"keys"`
	Rate    stat   `json:"conns_per_sec"`
	Nanos   stat   `json:"ns_per_call"`
}

// The variants' colours, the same in every chart.
var colours = map[string]color.Color{
	"plain":     plotutil.Color(0),
	"tcpmd5":    plotutil.Color(1),
	"xsys":      plotutil.Color(2),
	"MD5 bound": color.Gray{Y: 110},
}

var labels = map[string]string{
	"plain":     "plain TCP",
	"tcpmd5":    "MD5, tcpmd5",
	"xsys":      "MD5, x/sys baseline",
	"MD5 bound": "MD5 hashing bound",
}

func main() {
	out := flag.String("o", ".", "directory to write the charts to")
	format := flag.String("format", "svg", "image format: svg, png or pdf")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: benchcharts [-o dir] [-format svg] report.json (- or nothing for stdin)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(flag.Arg(0), *out, *format); err != nil {
		fmt.Fprintln(os.Stderr, "benchcharts:", err)
		os.Exit(1)
	}
}

func run(in, dir, format string) error {
	var r io.Reader = os.Stdin
	if in != "" && in != "-" {
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	var rep report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return fmt.Errorf("reading the report: %w", err)
	}
	if len(rep.Setup) == 0 || len(rep.Throughput) == 0 {
		return fmt.Errorf("the report has no measurements; make one with: go run ./cmd/tcpmd5-bench -o report.json")
	}
	charts := []struct {
		name string
		make func(*report) (*plot.Plot, error)
	}{
		{"throughput", throughputChart},
		{"setup", setupChart},
		{"accept", acceptChart},
		{"setkey", setKeyChart},
	}
	for _, c := range charts {
		p, err := c.make(&rep)
		if err != nil {
			return fmt.Errorf("%s chart: %w", c.name, err)
		}
		name := filepath.Join(dir, c.name+"."+format)
		if err := save(p, name, format); err != nil {
			return err
		}
		fmt.Println(name)
	}
	return nil
}

// save writes p to name. An SVG carries its fonts (Liberation, which the
// plot module ships), so that it reads the same on a machine without them;
// the other formats are drawn with them already.
func save(p *plot.Plot, name, format string) error {
	const w, h = 6 * vg.Inch, 3.6 * vg.Inch
	if format != "svg" {
		return p.Save(w, h, name)
	}
	c := vgsvg.NewWith(vgsvg.UseWH(w, h), vgsvg.EmbedFonts(true))
	p.Draw(draw.New(c))
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// tidyTicks are plot.DefaultTicks labelled without trailing zeros: "1000",
// "2.5", not "1000.00".
type tidyTicks struct{}

func (tidyTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i, t := range ticks {
		if t.Label != "" {
			ticks[i].Label = strconv.FormatFloat(t.Value, 'f', -1, 64)
		}
	}
	return ticks
}

func newPlot(r *report, title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s\n%s, %d CPUs, Linux %s, %s; median of %d rounds, whiskers min to max",
		title, r.Machine.CPU, r.Machine.CPUs, r.Machine.Kernel, r.Machine.Go, r.Config.Rounds)
	p.Title.TextStyle.Font.Size = vg.Points(10)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	p.Y.Label.Text = ylabel
	p.Y.Tick.Marker = tidyTicks{}
	p.Y.Min = 0
	p.Legend.Top = true
	return p
}

// bars adds one bar per value at x positions xs (data units), coloured for
// series, with whiskers from lo to hi.
func bars(p *plot.Plot, series string, xs, med, lo, hi []float64, width vg.Length) error {
	for i := range xs {
		b, err := plotter.NewBarChart(plotter.Values{med[i]}, width)
		if err != nil {
			return err
		}
		b.XMin = xs[i]
		b.Color = colours[series]
		b.LineStyle.Width = 0
		p.Add(b)
		if i == 0 {
			p.Legend.Add(labels[series], b)
		}
	}
	if lo == nil {
		return nil
	}
	pts := make(errPoints, len(xs))
	for i := range xs {
		pts[i] = errPoint{x: xs[i], y: med[i], lo: med[i] - lo[i], hi: hi[i] - med[i]}
	}
	eb, err := plotter.NewYErrorBars(pts)
	if err != nil {
		return err
	}
	eb.LineStyle.Width = vg.Points(1)
	p.Add(eb)
	return nil
}

type errPoint struct{ x, y, lo, hi float64 }

type errPoints []errPoint

func (e errPoints) Len() int                        { return len(e) }
func (e errPoints) XY(i int) (float64, float64)     { return e[i].x, e[i].y }
func (e errPoints) YError(i int) (float64, float64) { return e[i].lo, e[i].hi }

func throughputChart(r *report) (*plot.Plot, error) {
	p := newPlot(r, "Bulk throughput over loopback", "MB/s (10⁶ bytes per second)")
	var conns []int
	for _, t := range r.Throughput {
		if !slices.Contains(conns, t.Conns) {
			conns = append(conns, t.Conns)
		}
	}
	series := []string{"plain", "tcpmd5", "xsys", "MD5 bound"}
	const step = 0.2
	names := make([]string, len(conns))
	for g, n := range conns {
		names[g] = strconv.Itoa(n) + " connection"
		if n != 1 {
			names[g] += "s"
		}
	}
	for s, name := range series {
		var xs, med, lo, hi []float64
		for g, n := range conns {
			x := float64(g) + (float64(s)-float64(len(series)-1)/2)*step
			if name == "MD5 bound" {
				for _, b := range r.MD5.Bounds {
					if b.Conns == n {
						xs, med = append(xs, x), append(med, b.MBps)
					}
				}
				continue
			}
			for _, t := range r.Throughput {
				if t.Variant == name && t.Conns == n {
					xs, med = append(xs, x), append(med, t.MBps.Median)
					lo, hi = append(lo, t.MBps.Min), append(hi, t.MBps.Max)
				}
			}
		}
		if len(xs) == 0 {
			continue
		}
		if err := bars(p, name, xs, med, lo, hi, vg.Points(26)); err != nil {
			return nil, err
		}
	}
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(conns))-0.5
	return p, nil
}

func setupChart(r *report) (*plot.Plot, error) {
	p := newPlot(r, "Connection set-up: dial, accept, one round trip, close", "connections per second")
	var names []string
	for i, s := range r.Setup {
		names = append(names, labels[s.Variant])
		if err := bars(p, s.Variant, []float64{float64(i)}, []float64{s.Rate.Median}, []float64{s.Rate.Min}, []float64{s.Rate.Max}, vg.Points(60)); err != nil {
			return nil, err
		}
	}
	p.NominalX(names...)
	p.Legend = plot.NewLegend()
	p.X.Min, p.X.Max = -0.5, float64(len(names))-0.5
	return p, nil
}

// keyChart draws one line per keyed variant of what value gives, against
// the number of keys on a logarithmic axis, and plain TCP, which holds no
// keys, as a dashed line across.
func keyChart(r *report, title, ylabel string, rows []keyed, value func(keyed) stat) (*plot.Plot, error) {
	p := newPlot(r, title, ylabel)
	p.Legend.Top = false
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.ConstantTicks(keyTicks(rows))
	var xmin, xmax float64
	for _, v := range []string{"tcpmd5", "xsys"} {
		var pts errPoints
		for _, k := range rows {
			if k.Variant == v && k.Keys > 0 {
				s := value(k)
				pts = append(pts, errPoint{x: float64(k.Keys), y: s.Median, lo: s.Median - s.Min, hi: s.Max - s.Median})
			}
		}
		if len(pts) == 0 {
			continue
		}
		xmin, xmax = pts[0].x, pts[len(pts)-1].x
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, err
		}
		l.Color, sc.Color = colours[v], colours[v]
		sc.Shape = draw.CircleGlyph{}
		eb, err := plotter.NewYErrorBars(pts)
		if err != nil {
			return nil, err
		}
		eb.Color = colours[v]
		p.Add(l, sc, eb)
		p.Legend.Add(labels[v], l, sc)
	}
	for _, k := range rows {
		if k.Variant == "plain" && xmax > 0 {
			y := value(k).Median
			l, err := plotter.NewLine(plotter.XYs{{X: xmin, Y: y}, {X: xmax, Y: y}})
			if err != nil {
				return nil, err
			}
			l.Color = colours["plain"]
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(l)
			p.Legend.Add(labels["plain"]+" (no keys)", l)
		}
	}
	p.X.Label.Text = "keys installed on the listener (log scale)"
	return p, nil
}

func keyTicks(rows []keyed) []plot.Tick {
	var ticks []plot.Tick
	for _, k := range rows {
		if k.Keys > 0 && !slices.ContainsFunc(ticks, func(t plot.Tick) bool { return t.Value == float64(k.Keys) }) {
			ticks = append(ticks, plot.Tick{Value: float64(k.Keys), Label: strconv.Itoa(k.Keys)})
		}
	}
	return ticks
}

func acceptChart(r *report) (*plot.Plot, error) {
	return keyChart(r, "Accept rate against keys per listening socket", "connections per second", r.Accept, func(k keyed) stat { return k.Rate })
}

func setKeyChart(r *report) (*plot.Plot, error) {
	p, err := keyChart(r, "SetKey against keys already installed", "µs per call", r.SetKey, func(k keyed) stat {
		return stat{Median: k.Nanos.Median / 1e3, Min: k.Nanos.Min / 1e3, Max: k.Nanos.Max / 1e3}
	})
	if err != nil {
		return nil, err
	}
	p.Legend.Top, p.Legend.Left = true, true
	return p, nil
}
