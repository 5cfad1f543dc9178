package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/tally"
	"github.com/tcplowlevel/tcpmd5/metrics"
)

const watchExamples = `  tcpmd5 watch                      # a live table: who fails our signatures, and why
  tcpmd5 watch -port 179 -for 10m   # BGP only, for ten minutes
  tcpmd5 watch -json | jq 'select(.reason == "md5-mismatch")'
  tcpmd5 watch -metrics 127.0.0.1:9179 > /dev/null  # for Prometheus to scrape
`

// watchRefresh is how often watch redraws its table or prints JSON lines.
const watchRefresh = time.Second

// counterReasons are the netstat counters watch falls back to, and the
// reason each counts.
var counterReasons = []struct {
	counter string
	reason  drops.Reason
}{
	{netstat.MD5Failure, drops.MD5Mismatch},
	{netstat.MD5NotFound, drops.MD5Missing},
	{netstat.MD5Unexpected, drops.MD5Unexpected},
	{netstat.AOBad, drops.AOMismatch},
	{netstat.AORequired, drops.AOMissing},
	{netstat.AOKeyNotFound, drops.AOKeyNotFound},
}

func (e *env) watch(args []string) int {
	fs := e.flagSet("watch [-json] [-for D] [-port N] [-metrics ADDR]", watchExamples)
	asJSON := fs.Bool("json", false, `print one JSON object a line: {"time","remote","local","reason","flags","count"}`)
	dur := fs.Duration("for", 0, "stop after `D`uration (default: until interrupted)")
	port := fs.Uint("port", 0, "only segments to local port `N` (default: every port)")
	metricsAddr := metricsFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return parseExit(err)
	}
	if len(pos) > 0 {
		fs.Usage()
		return e.errorf(ExitUsage, "watch takes no arguments, got %q", pos)
	}
	if *port > 65535 || *dur < 0 {
		return e.errorf(ExitUsage, "-port takes 0 to 65535 and -for a positive duration")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *dur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *dur)
		defer cancel()
	}
	var set metrics.Set
	stopMetrics, err := e.serveMetrics("watch", *metricsAddr, &set)
	if err != nil {
		return e.errorf(ExitUsage, "-metrics: %v", err)
	}
	defer stopMetrics()
	out := &watchOutput{env: e, json: *asJSON, live: !*asJSON && isTerminal(e.stdout), printed: make(map[string]uint64)}
	w, err := drops.Watch(drops.Filter{Port: uint16(*port)})
	if err != nil {
		e.warnf("cannot read the kernel's drop events: %v", err)
		e.warnf("falling back to the kernel's drop counters: the peer is unknown")
		out.note = "the peer is unknown: the kernel's drop events are out of reach, these are its counters"
		return e.watchCounters(ctx, out)
	}
	defer w.Close()
	defer set.Track(w)()
	if m := w.Missing(); len(m) > 0 {
		out.note = fmt.Sprintf("this kernel does not report %v (it lacks their tracepoints)", m)
		fmt.Fprintf(e.stderr, "tcpmd5 watch: %s\n", out.note)
	}
	what := "every port"
	if *port != 0 {
		what = fmt.Sprintf("port %d", *port)
	}
	fmt.Fprintf(e.stderr, "tcpmd5 watch: watching segments dropped for their signature on %s\n", what)

	var mu sync.Mutex
	var seen tally.Tally
	readErr := make(chan error, 1)
	go func() {
		for {
			ds, err := w.Read(ctx)
			if err != nil {
				readErr <- err
				return
			}
			mu.Lock()
			for _, d := range ds {
				seen.Add(d)
				set.Drop(d)
			}
			mu.Unlock()
		}
	}()
	tick := time.NewTicker(watchRefresh)
	defer tick.Stop()
	show := func(final bool) {
		mu.Lock()
		peers, others := seen.Peers(), seen.Others
		mu.Unlock()
		out.show(peers, others, w.Lost(), final)
	}
	for {
		select {
		case <-tick.C:
			show(false)
		case err := <-readErr:
			show(true)
			if ctx.Err() != nil {
				return ExitOK
			}
			return e.errorf(ExitNo, "%v", err)
		}
	}
}

// watchCounters prints what the signature counters moved, peer unknown,
// until ctx is done.
func (e *env) watchCounters(ctx context.Context, out *watchOutput) int {
	start, err := netstat.Read()
	if err != nil {
		return e.errorf(ExitNo, "cannot read the drop counters either: %v", err)
	}
	fmt.Fprintf(e.stderr, "tcpmd5 watch: watching the drop counters of this network namespace, every port\n")
	first := time.Now()
	unknown := netip.AddrPort{}
	tick := time.NewTicker(watchRefresh)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-tick.C:
		case <-ctx.Done():
			done = true
		}
		now, err := netstat.Read()
		if err != nil {
			return e.errorf(ExitNo, "reading the drop counters: %v", err)
		}
		var peers []tally.Peer
		for _, cr := range counterReasons {
			if n := start.Delta(now, cr.counter)[cr.counter]; n > 0 {
				peers = append(peers, tally.Peer{Remote: unknown, Local: unknown, Reason: cr.reason, Count: n, First: first, Last: time.Now()})
			}
		}
		out.show(peers, 0, 0, done)
	}
	return ExitOK
}

// watchOutput prints watch's lines: a table redrawn in place on a terminal,
// the changed lines as JSON, or, elsewhere, the table once at the end.
type watchOutput struct {
	*env
	json, live bool
	printed    map[string]uint64 // JSON: the count last printed for each line
	note       string            // under the live table's title: what the kernel cannot report
}

func (o *watchOutput) show(peers []tally.Peer, others, lost uint64, final bool) {
	if o.json {
		enc := json.NewEncoder(o.stdout)
		for _, p := range peers {
			k := peerName(p.Remote) + " " + p.Local.String() + " " + string(p.Reason)
			if o.printed[k] != p.Count {
				o.printed[k] = p.Count
				_ = enc.Encode(p)
			}
		}
		if final && lost+others > 0 {
			fmt.Fprintf(o.stderr, "tcpmd5 watch: %d drops not reported by peer: %d lost when the kernel's buffers were full, %d of peers past the table's limit\n", lost+others, lost, others)
		}
		return
	}
	if !o.live && !final {
		return
	}
	if o.live {
		fmt.Fprint(o.stdout, "\x1b[H\x1b[2J") // home, clear
		fmt.Fprintf(o.stdout, "tcpmd5 watch  %s  (Ctrl-C to stop)\n", time.Now().Format(time.TimeOnly))
		if o.note != "" {
			fmt.Fprintln(o.stdout, o.note)
		}
		fmt.Fprintln(o.stdout)
	}
	tw := tabwriter.NewWriter(o.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tLOCAL\tREASON\tFLAGS\tCOUNT\tLAST SEEN")
	for _, p := range peers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", peerName(p.Remote), peerName(p.Local), p.Reason, p.Flags, p.Count, p.Last.Format(time.TimeOnly))
	}
	tw.Flush()
	if len(peers) == 0 {
		fmt.Fprintln(o.stdout, "(no segment dropped for its signature so far)")
	}
	if lost+others > 0 {
		fmt.Fprintf(o.stdout, "\n%d more drops, peer unknown: %d lost when the kernel's buffers were full, %d of peers past the table's limit\n", lost+others, lost, others)
	}
}

func peerName(a netip.AddrPort) string {
	if !a.IsValid() {
		return "unknown"
	}
	return a.String()
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
