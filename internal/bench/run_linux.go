package bench

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
)

type variantKeys struct {
	variant string
	keys    int
}

type served struct {
	ln   Listener
	addr string
	stop func()
}

// Run measures every variant in cfg, round after round. Within a round the
// variants take turns at a fine grain, in an order rotated each round, so
// that what else the machine does touches them alike: one connection each
// for set-up and accept rates, slices of the transfer time for throughput,
// batches of calls for SetKey. Progress goes to progress, one line a round.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	if !tcpmd5.Supported() {
		return nil, fmt.Errorf("bench: this kernel does not sign TCP segments: %w", tcpmd5.ErrMD5Unsupported)
	}
	vs, err := Variants(cfg.Variants...)
	if err != nil {
		return nil, err
	}
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	open := func(v Variant, keys int, serve bool) (served, error) {
		ln, err := v.Listen(ListenerKeys(keys))
		if err != nil {
			return served{}, fmt.Errorf("bench: %s listener with %d keys: %w", v.Name, keys, err)
		}
		s := served{ln: ln, addr: ln.Addr().String(), stop: func() { ln.Close() }}
		if serve {
			s.stop = Serve(ln)
		}
		stops = append(stops, s.stop)
		return s, nil
	}
	keyed := func(v Variant) bool { return v.Name != Plain }
	baseline := func(v Variant) bool { return v.Name == XSys || v.Name == XSysAO }

	// Set-up and throughput go to a listener with the client's key alone,
	// accept rates to listeners with more keys, SetKey to listeners no
	// client dials.
	setupLn := map[string]served{}
	acceptLn := map[variantKeys]served{}
	setKeyLn := map[variantKeys]served{}
	for _, v := range vs {
		n := 0
		if keyed(v) {
			n = 1
		}
		if setupLn[v.Name], err = open(v, n, true); err != nil {
			return nil, err
		}
		if !keyed(v) {
			continue
		}
		// A baseline that puts every key on one socket may not hold n of
		// them (ENOMEM, TCP-AO keys being larger): it is not measured at n.
		for _, n := range cfg.Accept {
			ln, err := open(v, n, true)
			if err != nil && !(baseline(v) && errors.Is(err, unix.ENOMEM)) {
				return nil, err
			}
			if err == nil {
				acceptLn[variantKeys{v.Name, n}] = ln
			}
		}
		for _, n := range cfg.SetKey {
			ln, err := open(v, n, false)
			if err != nil && !(baseline(v) && errors.Is(err, unix.ENOMEM)) {
				return nil, err
			}
			if err == nil {
				setKeyLn[variantKeys{v.Name, n}] = ln
			}
		}
	}

	// A short warm-up, thrown away.
	for _, v := range vs {
		if _, _, err := SetupRates(ctx, []Endpoint{{v, setupLn[v.Name].addr}}, cfg.SetupTime/20); err != nil {
			return nil, err
		}
		if _, err := BulkRate(ctx, v, setupLn[v.Name].addr, 1, cfg.BulkChunk, cfg.BulkTime/10); err != nil {
			return nil, err
		}
	}

	setupRuns := map[string][]float64{}
	setupLats := map[string][]time.Duration{}
	bulkRuns := map[variantKeys][]float64{} // keys holds the connection count
	setKeyRuns := map[variantKeys][]float64{}
	acceptRuns := map[variantKeys][]float64{}
	var hashRuns []float64
	slices := max(cfg.BulkSlices, 1)
	for round := range cfg.Rounds {
		if progress != nil {
			fmt.Fprintf(progress, "round %d/%d\n", round+1, cfg.Rounds)
		}
		order := rotate(vs, round)

		// Set-up: one connection per variant in turn.
		var targets []Endpoint
		for _, v := range order {
			targets = append(targets, Endpoint{v, setupLn[v.Name].addr})
		}
		rates, lats, err := SetupRates(ctx, targets, cfg.SetupTime)
		if err != nil {
			return nil, err
		}
		for i, t := range targets {
			setupRuns[t.Variant.Name] = append(setupRuns[t.Variant.Name], rates[i])
			setupLats[t.Variant.Name] = append(setupLats[t.Variant.Name], lats[i]...)
		}

		// Throughput: slices of BulkTime, variants in turn.
		for _, conns := range cfg.BulkConns {
			mb := map[string]float64{}
			for range slices {
				for _, v := range order {
					rate, err := BulkRate(ctx, v, setupLn[v.Name].addr, conns, cfg.BulkChunk, cfg.BulkTime/time.Duration(slices))
					if err != nil {
						return nil, err
					}
					mb[v.Name] += rate / float64(slices)
				}
			}
			for _, v := range vs {
				id := variantKeys{v.Name, conns}
				bulkRuns[id] = append(bulkRuns[id], mb[v.Name])
			}
		}

		// SetKey: batches on every listener in turn.
		var ids []variantKeys
		var ls []Listener
		for _, n := range rotate(cfg.SetKey, round) {
			for _, v := range order {
				if ln, ok := setKeyLn[variantKeys{v.Name, n}]; ok {
					ids, ls = append(ids, variantKeys{v.Name, n}), append(ls, ln.ln)
				}
			}
		}
		ns, err := SetKeyCosts(ls, cfg.SetKeyCalls, cfg.SetKeyBatch)
		if err != nil {
			return nil, fmt.Errorf("bench: SetKey: %w", err)
		}
		for i, id := range ids {
			setKeyRuns[id] = append(setKeyRuns[id], ns[i])
		}

		// Accept rate: one connection per listener in turn.
		ids, targets = nil, nil
		for _, n := range rotate(cfg.Accept, round) {
			for _, v := range order {
				if ln, ok := acceptLn[variantKeys{v.Name, n}]; ok {
					ids, targets = append(ids, variantKeys{v.Name, n}), append(targets, Endpoint{v, ln.addr})
				}
			}
		}
		for _, v := range order {
			if !keyed(v) {
				ids, targets = append(ids, variantKeys{v.Name, 0}), append(targets, Endpoint{v, setupLn[v.Name].addr})
			}
		}
		rates, _, err = SetupRates(ctx, targets, cfg.SetupTime)
		if err != nil {
			return nil, err
		}
		for i, id := range ids {
			acceptRuns[id] = append(acceptRuns[id], rates[i])
		}

		hashRuns = append(hashRuns, HashRate(cfg.HashTime))
	}

	r := &Report{Machine: machine(), Config: cfg, Date: time.Now().UTC().Truncate(time.Second)}
	for _, v := range vs {
		lats := sortedMicros(setupLats[v.Name])
		r.Setup = append(r.Setup, Setup{
			Variant: v.Name,
			Rate:    NewStat(setupRuns[v.Name]),
			P50:     Percentile(lats, 50),
			P90:     Percentile(lats, 90),
			P99:     Percentile(lats, 99),
		})
	}
	for _, conns := range cfg.BulkConns {
		for _, v := range vs {
			r.Throughput = append(r.Throughput, Throughput{Variant: v.Name, Conns: conns, MBps: NewStat(bulkRuns[variantKeys{v.Name, conns}])})
		}
	}
	r.MD5 = Hash{MBps: NewStat(hashRuns), CPUs: runtime.NumCPU()}
	for _, conns := range cfg.BulkConns {
		r.MD5.Bounds = append(r.MD5.Bounds, Bound{Conns: conns, MBps: HashBound(r.MD5.MBps.Median, conns, runtime.NumCPU())})
	}
	for _, v := range vs {
		if !keyed(v) {
			if runs, ok := acceptRuns[variantKeys{v.Name, 0}]; ok {
				r.Accept = append(r.Accept, Accept{Variant: v.Name, Keys: 0, Rate: NewStat(runs)})
			}
			continue
		}
		for _, n := range cfg.SetKey {
			if runs, ok := setKeyRuns[variantKeys{v.Name, n}]; ok {
				r.SetKey = append(r.SetKey, SetKey{Variant: v.Name, Keys: n, Nanos: NewStat(runs)})
			}
		}
		for _, n := range cfg.Accept {
			if runs, ok := acceptRuns[variantKeys{v.Name, n}]; ok {
				r.Accept = append(r.Accept, Accept{Variant: v.Name, Keys: n, Rate: NewStat(runs)})
			}
		}
	}
	r.CheckTargets()
	return r, nil
}

// rotate returns xs starting at its n-th element, wrapping around.
func rotate[T any](xs []T, n int) []T {
	n %= len(xs)
	return append(xs[n:len(xs):len(xs)], xs[:n]...)
}

// machine describes this host.
func machine() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), Go: runtime.Version(), CPU: "unknown CPU"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/sys/net/core/optmem_max"); err == nil {
		m.OptmemMax, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if name, value, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(name) == "model name" {
				m.CPU = strings.TrimSpace(value)
				break
			}
		}
	}
	return m
}

// sortedMicros returns latencies in microseconds, sorted.
func sortedMicros(ds []time.Duration) []float64 {
	us := make([]float64, len(ds))
	for i, d := range ds {
		us[i] = float64(d) / float64(time.Microsecond)
	}
	slices.SortFunc(us, cmp.Compare)
	return us
}
