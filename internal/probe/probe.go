// Package probe answers an operator's question about a TCP MD5 (RFC 2385)
// peer: does it accept our signature? A peer that cannot verify a signed SYN
// drops it in silence, so a wrong key looks like a dead host; probe tells
// the cases apart with a second, unsigned attempt and, when the peer is on
// this host, with the kernel's drop counters: the signature ones and the
// one of TTL security (RFC 5082 GTSM), which drops segments just as
// silently.
package probe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/bgp"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/tally"
)

// Verdict is what a probe concluded.
type Verdict string

// The verdicts of a probe. Only Signed means the peer accepts our signature.
const (
	// Signed: the signed handshake completed, so the peer holds our key.
	Signed Verdict = "signed"
	// NoKey: the signed SYN got no answer but an unsigned one connected,
	// so the peer holds no key for our address.
	NoKey Verdict = "peer-has-no-key"
	// KeyMismatch: neither a signed nor an unsigned SYN got an answer, so
	// the peer expects a signature, but not ours, or a filter drops us.
	KeyMismatch Verdict = "key-mismatch"
	// PortClosed: the peer answered with a reset.
	PortClosed Verdict = "port-closed"
	// Unreachable: the attempt failed otherwise (no route, no address).
	Unreachable Verdict = "unreachable"
	// TTLDropped: the signed SYN got no answer and the kernel counted
	// segments dropped for their TTL (TCPMinTTLDrop): one side has TTL
	// security on and the other does not send with TTL 255. Only a peer on
	// this host shows it.
	TTLDropped Verdict = "ttl-dropped"
)

// watched are the counters a probe reads when the peer is on this host.
var watched = append(append([]string(nil), netstat.MD5Counters...), netstat.AOBad, netstat.AOKeyNotFound, netstat.AORequired, netstat.MinTTLDrop)

// Config is what to probe and how.
type Config struct {
	Address string         // HOST:PORT; HOST is resolved once
	Keys    []tcpmd5.Key   // the key for HOST signs the SYN
	AOKeys  []tcpmd5.AOKey // or the TCP-AO keys for HOST
	Source  netip.Addr     // the local address to dial from; zero lets the kernel choose
	Timeout time.Duration
	// Wait is how long to wait for a connected peer to speak first.
	Wait time.Duration
	// TTLSecurity, when not 0, dials with TTL security of that many hops
	// (RFC 5082 GTSM), as [tcpmd5.Dialer.TTLSecurity]: both attempts send
	// with TTL 255 and drop answers that arrive with less than
	// 256-TTLSecurity.
	TTLSecurity int
	// Progress, if set, is told before each wait what probe waits for.
	Progress func(msg string)
}

// Result is the outcome of a probe. No field holds a secret.
type Result struct {
	Target string
	Source string
	// TTLSecurity is the hop count of TTL security both attempts used, 0
	// for none.
	TTLSecurity int
	Verdict     Verdict
	Summary     string
	// SignedError is the error of the signed attempt, if it failed.
	SignedError string
	// Unsigned is what the unsigned attempt found, if one was made.
	Unsigned string
	// Greeting is what the peer said on the connection that worked.
	Greeting *Greeting
	// PeerOnThisHost reports that the target is a local address, whose
	// drop counters this host's kernel keeps.
	PeerOnThisHost bool
	// Counters are the drop counters (signature and TTL) that moved
	// during the signed attempt, when the peer is on this host.
	Counters map[string]uint64
	// CounterNote says what the counters that moved mean.
	CounterNote string
	// Drops are the segments to or from the target that this host's
	// kernel dropped for their signature during the signed attempt, by
	// peer and reason, when the peer is on this host and the kernel
	// reports drops (drops.Watch).
	Drops []tally.Peer
	// DropsNote says why drops could not be watched, when the peer is on
	// this host.
	DropsNote string
}

// MarshalJSON encodes r as probe -json prints it: every field present,
// null where it has no value (no source given or known, no error, no
// unsigned attempt, no greeting, no counters read, no drops watched).
func (r Result) MarshalJSON() ([]byte, error) {
	text := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	var drops *[]tally.Peer
	if r.Drops != nil || r.PeerOnThisHost && r.DropsNote == "" {
		d := append([]tally.Peer{}, r.Drops...)
		drops = &d
	}
	var counters map[string]uint64
	if r.PeerOnThisHost {
		counters = r.Counters
		if counters == nil {
			counters = map[string]uint64{}
		}
	}
	return json.Marshal(struct {
		Target         string            `json:"target"`
		Source         *string           `json:"source"`
		TTLSecurity    int               `json:"ttl_security"`
		Verdict        Verdict           `json:"verdict"`
		Summary        string            `json:"summary"`
		SignedError    *string           `json:"signed_error"`
		Unsigned       *string           `json:"unsigned"`
		Greeting       *Greeting         `json:"greeting"`
		PeerOnThisHost bool              `json:"peer_on_this_host"`
		Counters       map[string]uint64 `json:"counters_moved"`
		CounterNote    *string           `json:"counter_note"`
		Drops          *[]tally.Peer     `json:"drops"`
		DropsNote      *string           `json:"drops_note"`
	}{r.Target, text(r.Source), r.TTLSecurity, r.Verdict, r.Summary, text(r.SignedError), text(r.Unsigned), r.Greeting,
		r.PeerOnThisHost, counters, text(r.CounterNote), drops, text(r.DropsNote)})
}

// Greeting is what a peer sent before we said anything, BGP's OPEN above all.
type Greeting struct {
	Bytes int          `json:"bytes"`
	BGP   *bgp.Message `json:"bgp,omitempty"`
	// Text is the start of the data, up to 200 bytes, when it is not BGP,
	// with invalid UTF-8 replaced; printers quote it.
	Text string `json:"text,omitempty"`
	// End says how the connection ended while we listened: "", "closed"
	// or "reset".
	End string `json:"end,omitempty"`
}

// CounterMeaning says what it means for a probe that a counter moved.
var CounterMeaning = map[string]string{
	netstat.MD5Failure:    "a signature did not verify: the peer holds a key for our address, with another secret",
	netstat.MD5Unexpected: "a signed segment arrived where no key was expected: the peer holds no key for our address",
	netstat.MD5NotFound:   "an unsigned segment arrived where a key was expected: the peer answered without a signature, so it holds no key for our address",
	netstat.AOBad:         "a TCP-AO MAC did not verify: the peer holds an AO key for our address with another secret, algorithm or MAC length",
	netstat.AOKeyNotFound: "a TCP-AO segment named a KeyID its receiver holds no key for: the KeyIDs differ (our SendID must be the peer's RecvID), or the peer holds no AO key for our address",
	netstat.AORequired:    "a segment without TCP-AO arrived where an AO key was expected: the peer answered without AO, so it holds no AO key for our address",
	netstat.MinTTLDrop:    "a segment arrived with a TTL below its socket's minimum: one side has TTL security (RFC 5082 GTSM) on and the other does not send with TTL 255",
}

// Run probes c.Address. It returns an error only when the probe could not
// start: no such host, no key for it, or no TCP MD5 on this system.
func Run(ctx context.Context, c Config) (Result, error) {
	r, err := run(ctx, c)
	if err == nil {
		r.Summary += r.dropsSummary()
	}
	return r, err
}

func run(ctx context.Context, c Config) (Result, error) {
	tcpAddr, err := net.ResolveTCPAddr("tcp", c.Address)
	if err != nil {
		return Result{}, fmt.Errorf("probe: %w", err)
	}
	target := tcpAddr.AddrPort()
	target = netip.AddrPortFrom(target.Addr().Unmap(), target.Port())
	if !tcpmd5.Supported() {
		return Result{}, fmt.Errorf("probe: %w", tcpmd5.ErrMD5Unsupported)
	}
	r := Result{Target: target.String(), PeerOnThisHost: isLocal(target.Addr()), TTLSecurity: c.TTLSecurity}
	src := c.Source
	if !src.IsValid() {
		src = sourceFor(target)
	}
	if src.IsValid() {
		r.Source = src.String()
	}
	var local *net.TCPAddr
	if c.Source.IsValid() {
		local = net.TCPAddrFromAddrPort(netip.AddrPortFrom(c.Source, 0))
	}

	d := &tcpmd5.Dialer{Keys: c.Keys, AOKeys: c.AOKeys, TTLSecurity: c.TTLSecurity}
	d.Timeout = c.Timeout
	if local != nil { // a nil *net.TCPAddr in the interface would print as <nil>
		d.LocalAddr = local
	}
	var before netstat.Counters
	var watcher *drops.Watcher
	if r.PeerOnThisHost {
		before, _ = netstat.Read()
		var werr error
		if watcher, werr = drops.Watch(drops.Filter{}); werr != nil {
			r.DropsNote = werr.Error()
		} else {
			defer watcher.Close()
		}
	}
	countersRead := false
	c.progress(fmt.Sprintf("signed SYN to %s%s; waiting up to %s for an answer", r.Target, from(r.Source), c.Timeout))
	conn, err := d.DialContext(ctx, "tcp", r.Target)
	if before != nil {
		if after, aerr := netstat.Read(); aerr == nil {
			r.noteCounters(before.Delta(after, watched...))
			countersRead = true
		}
	}
	var seen tally.Tally
	if watcher != nil {
		r.noteDrops(ctx, watcher, target, &seen)
	}
	if err == nil {
		defer conn.Close()
		r.Verdict = Signed
		r.Summary = "the peer accepted our signature: the signed handshake completed"
		c.progress(fmt.Sprintf("connected; listening up to %s for the peer to speak first", c.Wait))
		r.Greeting = listen(conn, c.Wait)
		return r, nil
	}
	if errors.Is(err, tcpmd5.ErrNoKey) || errors.Is(err, tcpmd5.ErrMD5Unsupported) || errors.Is(err, tcpmd5.ErrAOUnsupported) || errors.Is(err, tcpmd5.ErrTTLSecurityUnsupported) {
		return Result{}, fmt.Errorf("probe: %w", err)
	}
	r.SignedError = err.Error()
	if !timedOut(err) {
		r.Verdict, r.Summary = closedOrUnreachable(err)
		return r, nil
	}
	if r.Counters[netstat.MinTTLDrop] > 0 {
		// The kernel dropped a segment for its TTL before it looked at
		// the signature: an unsigned attempt would tell nothing more.
		r.Verdict = TTLDropped
		if c.TTLSecurity == 0 {
			r.Summary = "the peer has TTL security (RFC 5082 GTSM) on and dropped our SYN, sent with the default TTL: probe with -ttl-security"
		} else {
			r.Summary = fmt.Sprintf("we dropped the peer's answer for its TTL: with TTL security of %d hops we take only segments sent with TTL 255, and the peer does not send so (its TTL security is off)", c.TTLSecurity)
		}
		return r, nil
	}

	// The unsigned attempt differs from the signed one in the signature
	// only, so it keeps the TTL security.
	nd := &tcpmd5.Dialer{TTLSecurity: c.TTLSecurity}
	nd.Timeout = c.Timeout
	if local != nil {
		nd.LocalAddr = local
	}
	c.progress(fmt.Sprintf("no answer to the signed SYN; trying once more unsigned, up to %s", c.Timeout))
	uconn, uerr := nd.DialContext(ctx, "tcp", r.Target)
	if before != nil { // the counters both attempts moved, TCPMD5NotFound for the unsigned one
		if after, aerr := netstat.Read(); aerr == nil {
			r.Counters, r.CounterNote = nil, ""
			r.noteCounters(before.Delta(after, watched...))
		}
	}
	if watcher != nil { // and the drops both made, as the counters
		r.noteDrops(ctx, watcher, target, &seen)
	}
	switch {
	case uerr == nil, errors.Is(uerr, syscall.ECONNRESET):
		// A reset in SYN-SENT is ECONNREFUSED: ECONNRESET means the
		// handshake completed and the peer reset the connection at once.
		r.Verdict = NoKey
		r.Unsigned = "connected"
		if uerr == nil {
			defer uconn.Close()
			r.Greeting = listen(uconn, c.Wait)
		} else {
			r.Greeting = &Greeting{End: "reset"}
		}
		if r.Greeting.End == "reset" {
			r.Summary = fmt.Sprintf("the peer holds no key for %s: it dropped our signed SYN, completed an unsigned handshake and reset it (its policy refuses peers without a key)", r.sourceName())
		} else {
			r.Summary = fmt.Sprintf("the peer holds no key for %s and takes unsigned connections: it dropped our signed SYN and served an unsigned one", r.sourceName())
		}
	case timedOut(uerr):
		r.Verdict = KeyMismatch
		r.Summary = fmt.Sprintf("the peer expects a signature, but not ours: its key for %s differs from ours, or a filter drops our segments", r.sourceName())
		if c.TTLSecurity != 0 && !countersRead {
			// On this host the counters would have shown a TTL drop.
			r.Summary += fmt.Sprintf("; or, with TTL security of %d hops, the peer is more than %d hops away or does not send with TTL 255", c.TTLSecurity, c.TTLSecurity)
		}
		r.Unsigned = "no answer either"
	default:
		r.Unsigned = uerr.Error()
		r.Verdict, r.Summary = closedOrUnreachable(uerr)
		if r.Verdict == PortClosed {
			r.Summary += " (a closed port does not answer a signed SYN at all, which is why only the unsigned attempt shows it)"
		}
	}
	return r, nil
}

// dropsRead is how long a probe waits for drop events the kernel has
// already written: they are in its buffers when the attempt ends.
const dropsRead = 200 * time.Millisecond

// noteDrops adds to seen the drops w saw of segments to or from target,
// whichever form the kernel named its address in (a dual-stack socket's
// are v4-mapped), and records them all.
func (r *Result) noteDrops(ctx context.Context, w *drops.Watcher, target netip.AddrPort, seen *tally.Tally) {
	ctx, cancel := context.WithTimeout(ctx, dropsRead)
	defer cancel()
	unmap := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
	for {
		ds, err := w.Read(ctx)
		if err != nil {
			break
		}
		for _, d := range ds {
			if unmap(d.Local) == target || unmap(d.Remote) == target {
				seen.Add(d)
			}
		}
	}
	r.Drops = seen.Peers()
}

// dropsSummary says what the drops mean, or "" if there were none.
func (r *Result) dropsSummary() string {
	var parts []string
	for _, p := range r.Drops {
		parts = append(parts, fmt.Sprintf("%s dropped %d from %s as %s (%s)", p.Local, p.Count, p.Remote.Addr(), p.Reason, tally.Meaning(p.Reason)))
	}
	if len(parts) == 0 {
		return ""
	}
	return "; the kernel reports: " + strings.Join(parts, "; ")
}

func (c Config) progress(msg string) {
	if c.Progress != nil {
		c.Progress(msg)
	}
}

func from(src string) string {
	if src == "" {
		return ""
	}
	return " from " + src
}

func (r *Result) sourceName() string {
	if r.Source == "" {
		return "our address"
	}
	return "our address " + r.Source
}

func (r *Result) noteCounters(delta netstat.Counters) {
	for _, name := range watched {
		if delta[name] == 0 {
			continue
		}
		if r.Counters == nil {
			r.Counters = make(map[string]uint64)
		}
		r.Counters[name] = delta[name]
		if r.CounterNote != "" {
			r.CounterNote += "; "
		}
		r.CounterNote += name + ": " + CounterMeaning[name]
	}
}

func closedOrUnreachable(err error) (Verdict, string) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return PortClosed, "the peer refused the connection with a reset: nothing listens on that port"
	}
	return Unreachable, "the peer cannot be reached: " + err.Error()
}

func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// sourceFor returns the address the kernel would dial target from: a
// connected UDP socket learns it from the routing table and sends nothing.
func sourceFor(target netip.AddrPort) netip.Addr {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}

// isLocal reports whether a is an address of this host.
func isLocal(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// maxGreeting bounds what probe reads from a peer that speaks first.
const maxGreeting = 4096

// listen reads what the peer sends within wait: a whole BGP message, or the
// first bytes of anything else.
func listen(c net.Conn, wait time.Duration) *Greeting {
	g := &Greeting{}
	buf := make([]byte, 0, maxGreeting)
	deadline := time.Now().Add(wait)
	for len(buf) < maxGreeting {
		_ = c.SetReadDeadline(deadline)
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if m, perr := bgp.Parse(buf); perr == nil {
			g.BGP = &m
			break
		}
		if n > 0 && !bgp.IsBGP(buf) {
			// Not BGP: take what follows at once, then stop.
			deadline = time.Now().Add(200 * time.Millisecond)
		}
		if err != nil {
			switch {
			case errors.Is(err, syscall.ECONNRESET):
				g.End = "reset"
			case !timedOut(err):
				g.End = "closed"
			}
			break
		}
	}
	g.Bytes = len(buf)
	if g.BGP == nil && len(buf) > 0 {
		g.Text = strings.ToValidUTF8(string(buf[:min(len(buf), 200)]), "\uFFFD")
	}
	return g
}
