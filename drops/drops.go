// Package drops reports the TCP segments the Linux kernel drops for a
// missing or wrong TCP MD5 signature (RFC 2385) or TCP-AO MAC (RFC 5925),
// by peer: the kernel drops them in silence, and its counters name no one,
// so a wrong key and a dead peer look alike without it.
//
// The kernel reports each drop through the tcp:tcp_hash_* and tcp:tcp_ao_*
// tracepoints (Linux 6.11+), which [Watch] reads with perf_event_open(2)
// into a ring buffer per CPU; [Watcher.Read] waits for them on the Go
// runtime's poller, so a watcher costs no goroutine and no polling.
// Elsewhere, and on older kernels, Watch fails with [ErrUnsupported].
package drops

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"time"
)

// ErrUnsupported matches, with [errors.Is], the error of [Watch] where the
// kernel cannot report dropped segments: not Linux, a kernel before 6.11
// (which printed rate-limited "MD5 Hash failed" lines to the kernel log
// instead), or one built without tracepoints or perf events. Without
// permission the error matches [os.ErrPermission] instead.
var ErrUnsupported = errors.New("drops: this kernel does not report dropped segments (Linux 6.11+)")

// Reason says why the kernel dropped a segment. Its values are the reasons
// tcpmd5 watch prints.
type Reason string

// The reasons a segment is dropped, each from its kernel tracepoint.
const (
	MD5Mismatch   Reason = "md5-mismatch"     // signed with another secret (tcp_hash_md5_mismatch)
	MD5Missing    Reason = "md5-missing"      // unsigned from a peer we hold a key for (tcp_hash_md5_required)
	MD5Unexpected Reason = "md5-unexpected"   // signed by a peer we hold no key for (tcp_hash_md5_unexpected)
	BadHeader     Reason = "bad-header"       // a malformed or doubled MD5 or AO option (tcp_hash_bad_header)
	AOMismatch    Reason = "ao-mismatch"      // an AO MAC that does not verify, or of the wrong length (tcp_ao_mismatch, tcp_ao_wrong_maclen, tcp_ao_handshake_failure)
	AOMissing     Reason = "ao-missing"       // unsigned from a peer we hold an AO key for (tcp_hash_ao_required)
	AOKeyNotFound Reason = "ao-key-not-found" // an AO KeyID we hold no key for (tcp_ao_key_not_found)
)

// Reasons lists every reason, in the order above.
var Reasons = []Reason{MD5Mismatch, MD5Missing, MD5Unexpected, BadHeader, AOMismatch, AOMissing, AOKeyNotFound}

// Drop is one segment the kernel dropped for its signature.
type Drop struct {
	Time    time.Time      // when it was read, within milliseconds of the drop
	Reason  Reason         // why
	Remote  netip.AddrPort // the segment's source: the peer
	Local   netip.AddrPort // the segment's destination: this host
	Flags   string         // the TCP flags set, in tcpdump's letters: "S", "S.", "P.", "R", "F."
	State   string         // the state of the socket that dropped it: "LISTEN", "ESTABLISHED", ...
	L3Index int            // the VRF the segment arrived through; 0 for none
	// KeyID, RNextKeyID and MACLen are the segment's TCP-AO option, for the
	// ao- reasons that carry one; zero otherwise.
	KeyID, RNextKeyID, MACLen uint8
}

// Filter selects the drops a [Watcher] reads. The kernel applies it, so
// drops it rejects cost no copy to user space.
type Filter struct {
	Port uint16 // the local port, as a listener's; 0 for every port
}

// Watcher reads the drops of the caller's network namespace as the kernel
// reports them. Its methods are safe for concurrent use.
type Watcher struct {
	w *watcher // per OS
}

// Watch starts reading the segments the kernel drops for a missing or
// wrong signature in the caller's network namespace, as filter selects.
// Reading tracepoints needs CAP_PERFMON or root: without it the error
// matches [os.ErrPermission]; without the tracepoints, [ErrUnsupported].
// A kernel that has only some of them (the AO ones need CONFIG_TCP_AO) is
// watched for those; [Watcher.Missing] says which reasons it cannot report.
func Watch(filter Filter) (*Watcher, error) {
	w, err := watch(filter)
	if err != nil {
		return nil, err
	}
	return &Watcher{w: w}, nil
}

// Read waits until the kernel reports drops, ctx is done or the watcher is
// closed, and returns the drops, oldest first on each CPU. After Close it
// returns an error that matches [net.ErrClosed]; once ctx is done, ctx's
// error.
func (w *Watcher) Read(ctx context.Context) ([]Drop, error) { return w.w.read(ctx) }

// Lost returns how many drops the kernel could not report because the
// watcher's buffers were full, since [Watch]: read faster, or count these
// as drops of unknown peers.
func (w *Watcher) Lost() uint64 { return w.w.lost() }

// Missing returns the reasons this kernel cannot report, because it lacks
// their tracepoints (the ao- ones without CONFIG_TCP_AO, for example).
func (w *Watcher) Missing() []Reason { return slices.Clone(w.w.missing) }

// Close stops the watcher; a Read in progress returns.
func (w *Watcher) Close() error { return w.w.close() }
