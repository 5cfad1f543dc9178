package bench

import (
	"bytes"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMedian(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"odd", []float64{5, 1, 3}, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5},
		{"one", []float64{7}, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := append([]float64(nil), tt.in...)
			assert.Equal(t, tt.want, Median(tt.in))
			assert.Equal(t, in, tt.in, "Median reordered its input")
		})
	}
	assert.True(t, math.IsNaN(Median(nil)))
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	sorted := make([]float64, 100)
	for i := range sorted {
		sorted[i] = float64(i + 1)
	}
	assert.Equal(t, 50.0, Percentile(sorted, 50))
	assert.Equal(t, 99.0, Percentile(sorted, 99))
	assert.Equal(t, 100.0, Percentile(sorted, 100))
	assert.Equal(t, 1.0, Percentile(sorted, 0))
	assert.True(t, math.IsNaN(Percentile(nil, 50)))
}

func TestNewStat(t *testing.T) {
	t.Parallel()
	s := NewStat([]float64{10, 8, 12})
	assert.Equal(t, Stat{Median: 10, Min: 8, Max: 12, Runs: []float64{10, 8, 12}}, s)
	assert.InDelta(t, 0.4, s.Spread(), 1e-12)
}

func TestHashBound(t *testing.T) {
	t.Parallel()
	assert.Equal(t, 300.0, HashBound(600, 1, 2), "one connection hashes twice on one core")
	assert.Equal(t, 600.0, HashBound(600, 8, 2), "eight connections are held to the cores")
	assert.Equal(t, 1200.0, HashBound(600, 4, 16))
}

// report returns a report whose tcpmd5 measurements are the baseline's
// scaled by setup, bulk and the SetKey growth from 10 to 900 keys.
func report(setup, bulk, growth float64) *Report {
	cfg := DefaultConfig()
	r := &Report{Config: cfg}
	base := []float64{1000, 1100, 900}
	scale := func(f float64) []float64 {
		out := make([]float64, len(base))
		for i, b := range base {
			out[i] = b * f
		}
		return out
	}
	r.Setup = []Setup{{Variant: TCPMD5, Rate: NewStat(scale(setup))}, {Variant: XSys, Rate: NewStat(base)}}
	for _, n := range cfg.BulkConns {
		r.Throughput = append(r.Throughput,
			Throughput{Variant: TCPMD5, Conns: n, MBps: NewStat(scale(bulk))},
			Throughput{Variant: XSys, Conns: n, MBps: NewStat(base)})
	}
	r.SetKey = []SetKey{
		{Variant: TCPMD5, Keys: 10, Nanos: NewStat(base)},
		{Variant: TCPMD5, Keys: 100, Nanos: NewStat(base)},
		{Variant: TCPMD5, Keys: 900, Nanos: NewStat(scale(growth))},
		{Variant: XSys, Keys: 10, Nanos: NewStat(base)},
		{Variant: XSys, Keys: 900, Nanos: NewStat(scale(10))},
	}
	r.CheckTargets()
	return r
}

func TestCheckTargets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                string
		setup, bulk, growth float64
		failed              []string // names of the targets not met
	}{
		{name: "all met", setup: 0.99, bulk: 0.98, growth: 1.9},
		{name: "set-up too slow", setup: 0.97, bulk: 1, growth: 1, failed: []string{"set-up rate, tcpmd5 / x/sys baseline"}},
		{name: "throughput too slow", setup: 1, bulk: 0.96, growth: 1, failed: []string{"throughput 1 conn, tcpmd5 / x/sys baseline", "throughput 8 conns, tcpmd5 / x/sys baseline"}},
		{name: "SetKey grows", setup: 1, bulk: 1, growth: 2.1, failed: []string{"tcpmd5 SetKey time, 900 keys / 10 keys"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := report(tt.setup, tt.bulk, tt.growth)
			require.Len(t, r.Targets, 4)
			var failed []string
			for _, tg := range r.Targets {
				if !tg.OK {
					failed = append(failed, tg.Name)
				}
			}
			assert.Equal(t, tt.failed, failed)
			assert.Equal(t, len(tt.failed) == 0, r.OK())
		})
	}
}

func TestCheckTargetsContext(t *testing.T) {
	t.Parallel()
	r := report(1, 1, 3)
	names := map[string]float64{}
	for _, c := range r.Context {
		names[c.Name] = c.Ratio.Median
	}
	assert.InDelta(t, 10, names["x/sys baseline SetKey time, 900 keys / 10 keys (the kernel's key list)"], 1e-9)
	assert.InDelta(t, 0.3, names["SetKey time at 900 keys, tcpmd5 / x/sys baseline"], 1e-9)
	assert.InDelta(t, 1, names["SetKey time at 10 keys, tcpmd5 / x/sys baseline"], 1e-9)
	assert.NotContains(t, names, "SetKey time at 100 keys, tcpmd5 / x/sys baseline", "a ratio without a baseline measurement")
}

func TestCheckTargetsMissingMeasurements(t *testing.T) {
	t.Parallel()
	r := &Report{Config: DefaultConfig()}
	r.CheckTargets()
	require.NotEmpty(t, r.Targets)
	assert.False(t, r.OK(), "a run that measured nothing met its targets")
}

func TestWriteTableNamesFailedTarget(t *testing.T) {
	t.Parallel()
	r := report(0.5, 1, 1)
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	assert.Regexp(t, `set-up rate, tcpmd5 / x/sys baseline\s+0\.500\s+\[0\.500, 0\.500\]\s+want >= 0\.98\s+NOT MET`, b.String())
	assert.Regexp(t, `throughput 8 conns, tcpmd5 / x/sys baseline\s+1\.000 .*\smet\n`, b.String())
	assert.Contains(t, r.Failed(), "set-up rate, tcpmd5 / x/sys baseline = 0.500 (want >= 0.98)")
}

func TestHashRate(t *testing.T) {
	t.Parallel()
	assert.Positive(t, HashRate(10_000_000)) // 10ms
}
