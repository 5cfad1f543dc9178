// Package bench measures what RFC 2385 TCP MD5 signatures cost and what
// tcpmd5 adds on top of the kernel. It runs three variants side by side in
// one process, interleaved round by round: plain TCP, TCP with MD5 through
// tcpmd5, and TCP with MD5 set by hand through golang.org/x/sys/unix (the
// baseline). All traffic stays on loopback, in 127.6.0.0/16.
package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// The variants, by the names the report uses.
const (
	Plain  = "plain"     // TCP without signatures
	TCPMD5 = "tcpmd5"    // TCP with MD5 keys installed by this module
	XSys   = "xsys"      // TCP with MD5 keys installed by hand with x/sys
	TCPAO  = "tcpmd5-ao" // TCP with TCP-AO keys installed by this module
	XSysAO = "xsys-ao"   // TCP with TCP-AO keys installed by hand with x/sys
)

// VariantNames are the variants in the order the report lists them;
// AOVariantNames, those a kernel with TCP-AO adds.
var (
	VariantNames   = []string{Plain, TCPMD5, XSys}
	AOVariantNames = []string{TCPAO, XSysAO}
)

// KeyCounts are the numbers of keys on one listening socket at which SetKey
// and the accept rate are measured.
var (
	SetKeyCounts = []int{10, 100, 900}
	AcceptCounts = []int{1, 10, 100, 900}
)

// Config sets how long each measurement runs.
type Config struct {
	Rounds      int           `json:"rounds"`       // rounds; each measurement runs once per round and variant
	SetupTime   time.Duration `json:"setup_ns"`     // per round, for the set-up and for the accept-rate measurement, all variants together
	BulkTime    time.Duration `json:"bulk_ns"`      // per round, variant and connection count
	BulkSlices  int           `json:"bulk_slices"`  // BulkTime is cut in this many slices, the variants taking turns
	SetKeyCalls int           `json:"setkey_calls"` // SetKey calls per round and listener
	SetKeyBatch int           `json:"setkey_batch"` // calls timed together; the median batch counts
	HashTime    time.Duration `json:"hash_ns"`      // per round, for crypto/md5
	BulkConns   []int         `json:"bulk_conns"`   // connections per throughput measurement
	BulkChunk   int           `json:"bulk_chunk"`   // bytes per write
	Variants    []string      `json:"variants"`     // the variants measured
	Accept      []int         `json:"accept_keys"`  // key counts of the accept-rate measurement
	SetKey      []int         `json:"setkey_keys"`  // key counts of the SetKey measurement
}

// DefaultConfig is the full run, about a minute and a half.
func DefaultConfig() Config {
	return Config{
		Rounds:      5,
		SetupTime:   2 * time.Second,
		BulkTime:    time.Second,
		BulkSlices:  5,
		SetKeyCalls: 10000,
		SetKeyBatch: 200,
		HashTime:    300 * time.Millisecond,
		BulkConns:   []int{1, 8},
		BulkChunk:   256 << 10,
		Variants:    VariantNames,
		Accept:      AcceptCounts,
		SetKey:      SetKeyCounts,
	}
}

// QuickConfig is a short run that shows the program works, not a
// measurement to quote.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Rounds = 2
	c.SetupTime = 300 * time.Millisecond
	c.BulkTime = 150 * time.Millisecond
	c.BulkSlices = 3
	c.SetKeyCalls = 2000
	c.HashTime = 50 * time.Millisecond
	return c
}

// Stat is one measured quantity over the rounds of a run.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"` // one value per round, in round order
}

// NewStat summarizes runs, one value per round.
func NewStat(runs []float64) Stat {
	if len(runs) == 0 {
		return Stat{}
	}
	return Stat{Median: Median(runs), Min: slices.Min(runs), Max: slices.Max(runs), Runs: slices.Clone(runs)}
}

// Spread is the distance from the smallest to the largest run, relative to
// the median.
func (s Stat) Spread() float64 {
	if s.Median == 0 {
		return 0
	}
	return (s.Max - s.Min) / s.Median
}

// Median returns the median of xs, the mean of the middle two for an even
// count; it does not modify xs.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Percentile returns the p-th percentile (0 to 100) of sorted, by the
// nearest-rank method.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Setup is the connection set-up rate of one variant: dial, accept, one
// round trip of one byte, close.
type Setup struct {
	Variant string  `json:"variant"`
	Rate    Stat    `json:"conns_per_sec"`
	P50     float64 `json:"p50_us"` // latency percentiles over all rounds, microseconds
	P90     float64 `json:"p90_us"`
	P99     float64 `json:"p99_us"`
}

// Throughput is the bulk rate of one variant over Conns connections at once.
type Throughput struct {
	Variant string `json:"variant"`
	Conns   int    `json:"conns"`
	MBps    Stat   `json:"mb_per_sec"` // 10^6 bytes per second, all connections together
}

// Hash is the speed of crypto/md5 on one core and the bound it puts on
// signed throughput.
type Hash struct {
	MBps   Stat    `json:"mb_per_sec"` // one goroutine hashing 64 KiB blocks
	CPUs   int     `json:"cpus"`
	Bounds []Bound `json:"bounds"`
}

// Bound is the most a number of signed connections can carry over loopback
// if hashing were all they did.
type Bound struct {
	Conns int     `json:"conns"`
	MBps  float64 `json:"mb_per_sec"`
}

// HashBound returns the signed-throughput bound for conns connections over
// loopback on a host with cpus cores, given one core hashes mbps: every
// byte is hashed twice, by the sender and by the receiver, and on loopback
// the receiver verifies in the softirq of the sending core, so each
// connection keeps at most one core busy hashing.
func HashBound(mbps float64, conns, cpus int) float64 {
	return float64(min(conns, cpus)) * mbps / 2
}

// SetKey is the cost of one SetKey call on a listener holding Keys keys.
type SetKey struct {
	Variant string `json:"variant"`
	Keys    int    `json:"keys"`
	Nanos   Stat   `json:"ns_per_call"`
}

// Accept is the connection rate of a listener holding Keys keys.
type Accept struct {
	Variant string `json:"variant"`
	Keys    int    `json:"keys"`
	Rate    Stat   `json:"conns_per_sec"`
}

// Target is one performance promise and whether this run kept it.
type Target struct {
	Name  string  `json:"name"`
	Ratio Stat    `json:"ratio"` // per-round ratios; the median is checked
	Op    string  `json:"op"`    // ">=" or "<="
	Limit float64 `json:"limit"`
	OK    bool    `json:"ok"`
}

// Machine describes where a report was measured.
type Machine struct {
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	OptmemMax int    `json:"optmem_max"`
}

// Report is the outcome of one run.
type Report struct {
	Machine    Machine      `json:"machine"`
	Config     Config       `json:"config"`
	Date       time.Time    `json:"date"`
	Setup      []Setup      `json:"setup"`
	Throughput []Throughput `json:"throughput"`
	MD5        Hash         `json:"md5"`
	SetKey     []SetKey     `json:"setkey"`
	Accept     []Accept     `json:"accept"`
	Targets    []Target     `json:"targets"`
	Context    []Ratio      `json:"context"` // ratios that explain the targets; no limit applies
}

// Ratio is a ratio between two measurements of a run, taken round by round.
type Ratio struct {
	Name  string `json:"name"`
	Ratio Stat   `json:"ratio"`
}

// OK reports whether the run kept every target.
func (r *Report) OK() bool {
	for _, t := range r.Targets {
		if !t.OK {
			return false
		}
	}
	return true
}

// The targets, as limits on the median per-round ratio.
const (
	SetupTarget      = 0.98 // tcpmd5 set-up rate / baseline set-up rate, at least
	ThroughputTarget = 0.97 // tcpmd5 throughput / baseline throughput, at least
	SetKeyTarget     = 2.0  // SetKey at 900 keys / SetKey at 10 keys, at most
)

// CheckTargets fills r.Targets from the measurements. Each ratio is taken
// round by round, between measurements made moments apart, and the median
// of those ratios is held against the limit. A target whose measurements
// are missing is not met.
func (r *Report) CheckTargets() {
	r.Targets, r.Context = nil, nil
	ratio := func(num, den []float64) Stat {
		if len(num) == 0 || len(num) != len(den) {
			return Stat{}
		}
		ratios := make([]float64, len(num))
		for i := range num {
			ratios[i] = num[i] / den[i]
		}
		return NewStat(ratios)
	}
	add := func(name, op string, limit float64, num, den []float64) {
		t := Target{Name: name, Op: op, Limit: limit}
		if t.Ratio = ratio(num, den); t.Ratio.Runs != nil {
			m := t.Ratio.Median
			t.OK = (op == ">=" && m >= limit) || (op == "<=" && m <= limit)
		}
		r.Targets = append(r.Targets, t)
	}
	setup := func(v string) []float64 {
		i := slices.IndexFunc(r.Setup, func(s Setup) bool { return s.Variant == v })
		if i < 0 {
			return nil
		}
		return r.Setup[i].Rate.Runs
	}
	add("set-up rate, tcpmd5 / x/sys baseline", ">=", SetupTarget, setup(TCPMD5), setup(XSys))
	bulk := func(v string, n int) []float64 {
		i := slices.IndexFunc(r.Throughput, func(t Throughput) bool { return t.Variant == v && t.Conns == n })
		if i < 0 {
			return nil
		}
		return r.Throughput[i].MBps.Runs
	}
	for _, n := range r.Config.BulkConns {
		add(fmt.Sprintf("throughput %s, tcpmd5 / x/sys baseline", conns(n)), ">=", ThroughputTarget, bulk(TCPMD5, n), bulk(XSys, n))
	}
	setKey := func(v string, n int) []float64 {
		i := slices.IndexFunc(r.SetKey, func(s SetKey) bool { return s.Variant == v && s.Keys == n })
		if i < 0 {
			return nil
		}
		return r.SetKey[i].Nanos.Runs
	}
	lo, hi := slices.Min(r.Config.SetKey), slices.Max(r.Config.SetKey)
	add(fmt.Sprintf("tcpmd5 SetKey time, %d keys / %d keys", hi, lo), "<=", SetKeyTarget, setKey(TCPMD5, hi), setKey(TCPMD5, lo))
	if slices.Contains(r.Config.Variants, TCPAO) {
		add("TCP-AO set-up rate, tcpmd5 / x/sys baseline", ">=", SetupTarget, setup(TCPAO), setup(XSysAO))
		for _, n := range r.Config.BulkConns {
			add(fmt.Sprintf("TCP-AO throughput %s, tcpmd5 / x/sys baseline", conns(n)), ">=", ThroughputTarget, bulk(TCPAO, n), bulk(XSysAO, n))
		}
		add(fmt.Sprintf("tcpmd5 SetAOKey time, %d keys / %d keys", hi, lo), "<=", SetKeyTarget, setKey(TCPAO, hi), setKey(TCPAO, lo))
	}

	context := func(name string, num, den []float64) {
		if s := ratio(num, den); s.Runs != nil {
			r.Context = append(r.Context, Ratio{Name: name, Ratio: s})
		}
	}
	context(fmt.Sprintf("x/sys baseline SetKey time, %d keys / %d keys (the kernel's key list)", hi, lo), setKey(XSys, hi), setKey(XSys, lo))
	for _, n := range r.Config.SetKey {
		context(fmt.Sprintf("SetKey time at %d keys, tcpmd5 / x/sys baseline", n), setKey(TCPMD5, n), setKey(XSys, n))
	}
	accept := func(v string, n int) []float64 {
		i := slices.IndexFunc(r.Accept, func(a Accept) bool { return a.Variant == v && a.Keys == n })
		if i < 0 {
			return nil
		}
		return r.Accept[i].Rate.Runs
	}
	for _, n := range r.Config.Accept {
		context(fmt.Sprintf("accept rate at %d keys, tcpmd5 / x/sys baseline", n), accept(TCPMD5, n), accept(XSys, n))
	}
	for _, n := range r.Config.BulkConns {
		context(fmt.Sprintf("throughput %s, TCP-AO / MD5 (what AO costs), tcpmd5", conns(n)), bulk(TCPAO, n), bulk(TCPMD5, n))
		context(fmt.Sprintf("throughput %s, MD5 / plain TCP, tcpmd5", conns(n)), bulk(TCPMD5, n), bulk(Plain, n))
	}
	context("set-up rate, TCP-AO / MD5, tcpmd5", setup(TCPAO), setup(TCPMD5))
	if len(r.Config.Accept) > 0 {
		n := slices.Max(r.Config.Accept)
		context(fmt.Sprintf("accept rate, %d keys / 1 key, tcpmd5", n), accept(TCPMD5, n), accept(TCPMD5, 1))
		context(fmt.Sprintf("accept rate, %d keys / 1 key, x/sys baseline", n), accept(XSys, n), accept(XSys, 1))
	}
}

func conns(n int) string {
	if n == 1 {
		return "1 conn"
	}
	return fmt.Sprintf("%d conns", n)
}

// WriteTable prints r for a terminal: every measurement with its median and
// spread, then each target with its verdict.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	m := r.Machine
	fmt.Fprintf(w, "%s/%s, %s, %d CPUs, Linux %s, %s, optmem_max %d; %d interleaved rounds, medians with [min, max]\n\n",
		m.OS, m.Arch, m.CPU, m.CPUs, m.Kernel, m.Go, m.OptmemMax, r.Config.Rounds)

	p("connection set-up\tconns/s\t[min, max]\tp50 µs\tp90 µs\tp99 µs\t\n")
	for _, s := range r.Setup {
		p("%s\t%.0f\t%s\t%.1f\t%.1f\t%.1f\t\n", s.Variant, s.Rate.Median, span(s.Rate, "%.0f"), s.P50, s.P90, s.P99)
	}
	p("\t\t\t\t\t\t\n")
	p("bulk throughput\tMB/s\t[min, max]\tvs plain\t\t\t\n")
	for _, t := range r.Throughput {
		rel := ""
		if i := slices.IndexFunc(r.Throughput, func(b Throughput) bool { return b.Variant == Plain && b.Conns == t.Conns }); i >= 0 {
			rel = fmt.Sprintf("%.2fx", t.MBps.Median/r.Throughput[i].MBps.Median)
		}
		p("%s, %s\t%.0f\t%s\t%s\t\t\t\n", t.Variant, conns(t.Conns), t.MBps.Median, span(t.MBps, "%.0f"), rel)
	}
	p("crypto/md5, one core\t%.0f\t%s\t\t\t\t\n", r.MD5.MBps.Median, span(r.MD5.MBps, "%.0f"))
	for _, b := range r.MD5.Bounds {
		p("MD5 bound, %s\t%.0f\t\t\t\t\t\n", conns(b.Conns), b.MBps)
	}
	p("\t\t\t\t\t\t\n")
	p("SetKey\tns/call\t[min, max]\t\t\t\t\n")
	for _, s := range r.SetKey {
		p("%s, %d keys\t%.0f\t%s\t\t\t\t\n", s.Variant, s.Keys, s.Nanos.Median, span(s.Nanos, "%.0f"))
	}
	p("\t\t\t\t\t\t\n")
	p("accept rate\tconns/s\t[min, max]\t\t\t\t\n")
	for _, a := range r.Accept {
		p("%s, %d keys\t%.0f\t%s\t\t\t\t\n", a.Variant, a.Keys, a.Rate.Median, span(a.Rate, "%.0f"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\ntargets (median of per-round ratios)\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, t := range r.Targets {
		verdict := "met"
		if !t.OK {
			verdict = "NOT MET"
		}
		fmt.Fprintf(tw, "%s\t%.3f\t[%.3f, %.3f]\twant %s %.2f\t%s\n", t.Name, t.Ratio.Median, t.Ratio.Min, t.Ratio.Max, t.Op, t.Limit, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Context) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nfor context (median of per-round ratios)\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range r.Context {
		fmt.Fprintf(tw, "%s\t%.3f\t[%.3f, %.3f]\n", c.Name, c.Ratio.Median, c.Ratio.Min, c.Ratio.Max)
	}
	return tw.Flush()
}

func span(s Stat, format string) string {
	return "[" + fmt.Sprintf(format, s.Min) + ", " + fmt.Sprintf(format, s.Max) + "]"
}

// Failed names the targets the run did not meet, for an error message.
func (r *Report) Failed() string {
	var names []string
	for _, t := range r.Targets {
		if !t.OK {
			names = append(names, fmt.Sprintf("%s = %.3f (want %s %.2f)", t.Name, t.Ratio.Median, t.Op, t.Limit))
		}
	}
	return strings.Join(names, "; ")
}
