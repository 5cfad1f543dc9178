package tcpmd5

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// ErrDropsUnsupported matches, with [errors.Is], the error of [WatchDrops]
// where the kernel cannot report dropped segments: not Linux, a kernel
// before 6.11 (which printed rate-limited "MD5 Hash failed" lines to the
// kernel log instead), or one built without tracepoints or perf events.
// Without permission the error matches [os.ErrPermission] instead.
var ErrDropsUnsupported = errors.New("tcpmd5: this kernel does not report dropped segments (tcp:tcp_hash_* tracepoints, Linux 6.11+)")

// DropReason says why the kernel dropped a segment. Its values are the
// reasons tcpmd5 watch prints.
type DropReason string

// The reasons a segment is dropped, each from its kernel tracepoint.
const (
	DropMD5Mismatch   DropReason = "md5-mismatch"     // signed with another secret (tcp_hash_md5_mismatch)
	DropMD5Missing    DropReason = "md5-missing"      // unsigned from a peer we hold a key for (tcp_hash_md5_required)
	DropMD5Unexpected DropReason = "md5-unexpected"   // signed by a peer we hold no key for (tcp_hash_md5_unexpected)
	DropBadHeader     DropReason = "bad-header"       // a malformed or doubled MD5 or AO option (tcp_hash_bad_header)
	DropAOMismatch    DropReason = "ao-mismatch"      // an AO MAC that does not verify, or of the wrong length (tcp_ao_mismatch, tcp_ao_wrong_maclen, tcp_ao_handshake_failure)
	DropAOMissing     DropReason = "ao-missing"       // unsigned from a peer we hold an AO key for (tcp_hash_ao_required)
	DropAOKeyNotFound DropReason = "ao-key-not-found" // an AO KeyID we hold no key for (tcp_ao_key_not_found)
)

// Meaning says in a sentence what a drop for r tells an operator.
func (r DropReason) Meaning() string {
	switch r {
	case DropMD5Mismatch:
		return "the peer signed with another secret than our key for it"
	case DropMD5Missing:
		return "we hold a key for the peer, and it sent an unsigned segment: it holds no key for us"
	case DropMD5Unexpected:
		return "the peer signed, and we hold no key for it"
	case DropBadHeader:
		return "the segment's MD5 or AO option is malformed, or it carries both"
	case DropAOMismatch:
		return "the peer's TCP-AO MAC did not verify: another secret, algorithm or MAC length"
	case DropAOMissing:
		return "we hold a TCP-AO key for the peer, and it sent a segment without AO"
	case DropAOKeyNotFound:
		return "the peer used a TCP-AO KeyID we hold no key for"
	}
	return "unknown reason"
}

// DropReasons lists every reason, in the order above.
var DropReasons = []DropReason{DropMD5Mismatch, DropMD5Missing, DropMD5Unexpected, DropBadHeader, DropAOMismatch, DropAOMissing, DropAOKeyNotFound}

// Drop is one segment the kernel dropped for its signature.
type Drop struct {
	Time    time.Time      // when it was read, within milliseconds of the drop
	Reason  DropReason     // why
	Remote  netip.AddrPort // the segment's source: the peer
	Local   netip.AddrPort // the segment's destination: this host
	Flags   string         // the TCP flags set, in tcpdump's letters: "S", "S.", "P.", "R", "F."
	State   string         // the state of the socket that dropped it: "LISTEN", "ESTABLISHED", ...
	L3Index int            // the VRF the segment arrived through; 0 for none
	// KeyID, RNextKeyID and MACLen are the segment's TCP-AO option, for the
	// ao- reasons that carry one; zero otherwise.
	KeyID, RNextKeyID, MACLen uint8
}

// DropWatcher reads the drops of the caller's network namespace as the
// kernel reports them (Linux 6.11+, CAP_PERFMON or root). Its methods are
// safe for concurrent use.
type DropWatcher struct {
	w *dropWatcher // per OS
}

// DropFilter selects the drops a [DropWatcher] reads. The kernel applies it,
// so drops it rejects cost no copy to user space.
type DropFilter struct {
	Port uint16 // the local port, as a listener's; 0 for every port
}

// WatchDrops starts reading the segments the kernel drops for a missing or
// wrong TCP MD5 signature (RFC 2385) or TCP-AO MAC (RFC 5925) in the
// caller's network namespace, as filter selects. The kernel reports them
// through the tcp:tcp_hash_* and tcp:tcp_ao_* tracepoints, read with
// perf_event_open(2), which needs CAP_PERFMON or root: without it the
// error matches [os.ErrPermission]; without the tracepoints,
// [ErrDropsUnsupported]. A kernel that has only some of them (the AO ones
// need CONFIG_TCP_AO) is watched for those; [DropWatcher.Missing] says which
// reasons it cannot report.
func WatchDrops(filter DropFilter) (*DropWatcher, error) {
	w, err := watchDrops(filter)
	if err != nil {
		return nil, err
	}
	return &DropWatcher{w: w}, nil
}

// Read waits until the kernel reports drops, ctx is done or the watcher is
// closed, and returns the drops, oldest first.
func (w *DropWatcher) Read(ctx context.Context) ([]Drop, error) { return w.w.read(ctx) }

// Lost returns how many drops the kernel could not report because the
// watcher's buffers were full, since [WatchDrops]: read faster, or count
// these as drops of unknown peers.
func (w *DropWatcher) Lost() uint64 { return w.w.lost() }

// Missing returns the reasons this kernel cannot report, because it lacks
// their tracepoints (the ao- ones without CONFIG_TCP_AO, for example).
func (w *DropWatcher) Missing() []DropReason { return slices.Clone(w.w.missing) }

// Close stops the watcher; a Read in progress returns [net.ErrClosed].
func (w *DropWatcher) Close() error { return w.w.close() }

// PeerDrops is what a [DropTally] knows of one peer's drops for one reason
// at one local address.
type PeerDrops struct {
	Remote      netip.AddrPort // the peer and the source port of its last dropped segment
	Local       netip.AddrPort
	Reason      DropReason
	Flags       string // of the last one
	Count       uint64
	First, Last time.Time
}

// MarshalJSON encodes p as tcpmd5 watch -json prints it:
// {"time","remote","local","reason","flags","count"}, time the last drop's
// in RFC 3339, addresses as "addr:port", or "unknown" where the kernel's
// counters, which name no one, stand in for its drop events.
func (p PeerDrops) MarshalJSON() ([]byte, error) {
	name := func(a netip.AddrPort) string {
		if !a.IsValid() {
			return "unknown"
		}
		return a.String()
	}
	return json.Marshal(struct {
		Time   time.Time  `json:"time"`
		Remote string     `json:"remote"`
		Local  string     `json:"local"`
		Reason DropReason `json:"reason"`
		Flags  string     `json:"flags"`
		Count  uint64     `json:"count"`
	}{p.Last, name(p.Remote), name(p.Local), p.Reason, p.Flags, p.Count})
}

// DropTally counts drops by peer address, local address and port, and
// reason, the way an operator reads them: a peer retrying from new source
// ports is one line. It keeps at most Limit lines (0 means 4096); the drops
// of further peers are counted in Others, so that a flood from many sources
// costs bounded memory. A DropTally is not safe for concurrent use.
type DropTally struct {
	Limit  int
	Others uint64 // drops of peers past Limit
	peers  map[tallyKey]*PeerDrops
}

type tallyKey struct {
	remote netip.Addr
	local  netip.AddrPort
	reason DropReason
}

// Add counts d.
func (t *DropTally) Add(d Drop) {
	k := tallyKey{d.Remote.Addr(), d.Local, d.Reason}
	p, ok := t.peers[k]
	if !ok {
		if len(t.peers) >= cmp.Or(t.Limit, 4096) {
			t.Others++
			return
		}
		if t.peers == nil {
			t.peers = make(map[tallyKey]*PeerDrops)
		}
		p = &PeerDrops{Local: d.Local, Reason: d.Reason, First: d.Time}
		t.peers[k] = p
	}
	p.Remote, p.Flags, p.Last = d.Remote, d.Flags, d.Time
	p.Count++
}

// Peers returns the lines, the most recent first.
func (t *DropTally) Peers() []PeerDrops {
	out := make([]PeerDrops, 0, len(t.peers))
	for _, p := range t.peers {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b PeerDrops) int {
		return cmp.Or(b.Last.Compare(a.Last), a.Remote.Compare(b.Remote), a.Local.Compare(b.Local), strings.Compare(string(a.Reason), string(b.Reason)))
	})
	return out
}

// Total returns every drop counted, Others included.
func (t *DropTally) Total() uint64 {
	n := t.Others
	for _, p := range t.peers {
		n += p.Count
	}
	return n
}
