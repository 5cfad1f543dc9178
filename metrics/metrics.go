// Package metrics counts what the kernel drops for a missing or wrong
// signature and what a [tcpmd5.Listener] refuses, by peer, in bounded
// memory, beside the kernel's own signature counters, and serves them in
// the Prometheus text exposition format. It needs no Prometheus library:
// [Set] is an http.Handler for a /metrics endpoint, and the module
// github.com/tcplowlevel/tcpmd5/tcpmd5prom turns it into a collector for
// a client_golang registry.
//
// The series, all counters but one gauge:
//
//	tcpmd5_dropped_segments_total{remote,local,reason}   drops by peer address (no port), local address and port, and reason
//	tcpmd5_drop_events_lost_total                        drops whose events were lost when the kernel's buffers were full
//	tcpmd5_drop_events_watched                           1 while drop events are read, 0 when the kernel cannot report them
//	tcpmd5_refused_connections_total{remote,local,reason} connections a Listener refused, by peer address, listener address and reason
//	tcpmd5_netstat_total{counter}                        the network namespace's TCPMD5* and TCPAO* counters (/proc/net/netstat)
//
// Past [Set.Limit] peers, a family's further counts go to one series whose
// labels are all "other", so that a flood from spoofed sources costs
// bounded memory and bounded series. A kernel counter that the kernel does
// not have (the TCPAO ones without CONFIG_TCP_AO) has no series.
package metrics

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/tally"
)

// The families, in the order [Set.Gather] returns them.
var Families = []Family{
	{Name: "tcpmd5_dropped_segments_total", Type: "counter", Labels: []string{"remote", "local", "reason"},
		Help: "TCP segments the kernel dropped for a missing or wrong MD5 signature or TCP-AO MAC, by peer address, local address and reason."},
	{Name: "tcpmd5_drop_events_lost_total", Type: "counter",
		Help: "Dropped segments whose events were lost when the kernel's buffers were full: they have no peer."},
	{Name: "tcpmd5_drop_events_watched", Type: "gauge",
		Help: "1 while the kernel's drop events are read; 0 when it cannot report them (Linux 6.11+, CAP_PERFMON)."},
	{Name: "tcpmd5_refused_connections_total", Type: "counter", Labels: []string{"remote", "local", "reason"},
		Help: "Connections a tcpmd5 Listener refused at Accept, by peer address, listener address and reason."},
	{Name: "tcpmd5_netstat_total", Type: "counter", Labels: []string{"counter"},
		Help: "The kernel's TCP MD5 and TCP-AO counters of this network namespace (/proc/net/netstat)."},
}

// kernelCounters are the netstat counters of tcpmd5_netstat_total.
var kernelCounters = []string{
	netstat.MD5NotFound, netstat.MD5Unexpected, netstat.MD5Failure,
	netstat.AOGood, netstat.AOBad, netstat.AORequired, netstat.AOKeyNotFound, "TCPAODroppedIcmps",
}

// Family is one metric family: its name, type, help and label names.
type Family struct {
	Name, Type, Help string
	Labels           []string
}

// Sample is one series of a family: its label values, in the order of the
// family's Labels, and its value.
type Sample struct {
	Labels []string
	Value  float64
}

// other is the label value of a family's series past the limit.
const other = "other"

// Set counts drops and refusals. Its methods are safe for concurrent use,
// and its zero value is ready to use.
type Set struct {
	// Limit caps the peers each family counts by name; 0 means 4096.
	Limit int

	mu       sync.Mutex
	drops    tally.Tally
	refused  map[refusal]uint64
	others   uint64           // refusals past Limit
	watchers []*drops.Watcher // those tracked now
	lost     uint64           // what those that ended lost
}

type refusal struct {
	remote netip.Addr
	local  netip.AddrPort
	reason tcpmd5.RefusalReason
}

// Drop counts d.
func (s *Set) Drop(d drops.Drop) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drops.Limit = s.limit()
	s.drops.Add(unmapped(d))
}

// Refused counts r. It fits [tcpmd5.ListenConfig.OnRefuse].
func (s *Set) Refused(r tcpmd5.Refusal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := refusal{r.Remote.Addr().Unmap(), unmapPort(r.Local), r.Reason}
	if _, ok := s.refused[k]; !ok && len(s.refused) >= s.limit() {
		s.others++
		return
	}
	if s.refused == nil {
		s.refused = make(map[refusal]uint64)
	}
	s.refused[k]++
}

func (s *Set) limit() int { return cmp.Or(s.Limit, 4096) }

// WatchDrops starts counting the segments the kernel drops, as filter
// selects, in the calling goroutine's network namespace, until stop is
// called; a goroutine of its own reads them. It fails at once as
// [drops.Watch] does where the kernel cannot report drops (an error that
// matches [drops.ErrUnsupported] or os.ErrPermission); the kernel's
// counters are served all the same.
func (s *Set) WatchDrops(filter drops.Filter) (stop func(), err error) {
	w, err := drops.Watch(filter)
	if err != nil {
		return nil, err
	}
	untrack := s.Track(w)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer untrack()
		for {
			ds, err := w.Read(context.Background())
			if err != nil { // closed by stop, or the watcher failed
				return
			}
			for _, d := range ds {
				s.Drop(d)
			}
		}
	}()
	return sync.OnceFunc(func() {
		w.Close()
		<-done
	}), nil
}

// Track counts, until untrack is called, the drops w lost and that it is
// read, for a caller that reads w itself and passes each drop to
// [Set.Drop].
func (s *Set) Track(w *drops.Watcher) (untrack func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watchers = append(s.watchers, w)
	return sync.OnceFunc(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.watchers = slices.DeleteFunc(s.watchers, func(o *drops.Watcher) bool { return o == w })
		s.lost += w.Lost()
	})
}

// Gather returns each of [Families] with its samples now, in a stable
// order. The kernel's counters are read from the calling goroutine's
// network namespace; if they cannot be read, that family has no samples.
func (s *Set) Gather() [][]Sample {
	out := make([][]Sample, len(Families))
	s.mu.Lock()
	for _, p := range s.drops.Peers() {
		out[0] = append(out[0], Sample{[]string{p.Remote.Addr().String(), p.Local.String(), string(p.Reason)}, float64(p.Count)})
	}
	if s.drops.Others > 0 {
		out[0] = append(out[0], Sample{[]string{other, other, other}, float64(s.drops.Others)})
	}
	lost, watched := s.lost, 0.0
	for _, w := range s.watchers {
		lost, watched = lost+w.Lost(), 1
	}
	out[1] = []Sample{{Value: float64(lost)}}
	out[2] = []Sample{{Value: watched}}
	for k, n := range s.refused {
		out[3] = append(out[3], Sample{[]string{k.remote.String(), k.local.String(), string(k.reason)}, float64(n)})
	}
	if s.others > 0 {
		out[3] = append(out[3], Sample{[]string{other, other, other}, float64(s.others)})
	}
	s.mu.Unlock()
	if c, err := netstat.Read(); err == nil {
		for _, name := range kernelCounters {
			if v, ok := c[name]; ok {
				out[4] = append(out[4], Sample{[]string{name}, float64(v)})
			}
		}
	}
	for _, f := range out {
		slices.SortStableFunc(f, func(a, b Sample) int { return slices.Compare(a.Labels, b.Labels) })
	}
	return out
}

// WriteTo writes the families in the Prometheus text exposition format
// (version 0.0.4).
func (s *Set) WriteTo(w io.Writer) (int64, error) {
	var b bytes.Buffer
	for i, samples := range s.Gather() {
		f := Families[i]
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.Name, f.Help, f.Name, f.Type)
		for _, sm := range samples {
			b.WriteString(f.Name)
			if len(f.Labels) > 0 {
				b.WriteByte('{')
				for j, l := range f.Labels {
					if j > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=%q", l, escape(sm.Labels[j]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(strconv.FormatFloat(sm.Value, 'g', -1, 64))
			b.WriteByte('\n')
		}
	}
	return b.WriteTo(w)
}

// ServeHTTP serves the families in the Prometheus text format. The
// server's goroutines are in the process's network namespace, and so are
// the kernel's counters it serves.
func (s *Set) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = s.WriteTo(w)
}

// escape keeps only what the text format lets a label value hold between
// its quotes, which %q then escapes the format's way: a label value here
// is an address, a reason or a counter name, and anything else (a byte
// that is not printable ASCII) is replaced, never passed through.
func escape(v string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, v)
}

// unmapped returns d with its addresses as unmapPort has them, so that a
// peer is one series whichever form the kernel named it in.
func unmapped(d drops.Drop) drops.Drop {
	d.Remote, d.Local = unmapPort(d.Remote), unmapPort(d.Local)
	return d
}

// unmapPort returns a with a v4-mapped address as IPv4, as the kernel's
// drop events name IPv4 peers of a dual-stack listener.
func unmapPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
