// Package tally counts the drops package drops reports the way an operator
// reads them, by peer, local address and reason, in bounded memory, and
// says what each drop and refusal reason means: the command's view of
// what the kernel and the Listener refuse, which probe,
// listen, watch and check print.
package tally

import (
	"cmp"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
)

// Meaning says in a sentence what a drop for r tells an operator.
func Meaning(r drops.Reason) string {
	switch r {
	case drops.MD5Mismatch:
		return "the peer signed with another secret than our key for it"
	case drops.MD5Missing:
		return "we hold a key for the peer, and it sent an unsigned segment: it holds no key for us"
	case drops.MD5Unexpected:
		return "the peer signed, and we hold no key for it"
	case drops.BadHeader:
		return "the segment's MD5 or AO option is malformed, or it carries both"
	case drops.AOMismatch:
		return "the peer's TCP-AO MAC did not verify: another secret, algorithm or MAC length"
	case drops.AOMissing:
		return "we hold a TCP-AO key for the peer, and it sent a segment without AO"
	case drops.AOKeyNotFound:
		return "the peer used a TCP-AO KeyID we hold no key for"
	}
	return "unknown reason"
}

// RefusalMeaning says in a sentence what a refusal for r tells an
// operator.
func RefusalMeaning(r tcpmd5.RefusalReason) string {
	switch r {
	case tcpmd5.RefusedNoKey:
		return "the peer connected unsigned and we hold no key for it; add one, or run with -allow-unsigned"
	case tcpmd5.RefusedKeyAdded:
		return "the peer connected unsigned before we took a key for it: it holds no key for us"
	}
	return "what the kernel did with the handshake could not be read, so the connection was not trusted"
}

// Peer is what a [Tally] knows of one peer's drops for one reason at one
// local address.
type Peer struct {
	Remote      netip.AddrPort // the peer and the source port of its last dropped segment
	Local       netip.AddrPort
	Reason      drops.Reason
	Flags       string // of the last one
	Count       uint64
	First, Last time.Time
}

// MarshalJSON encodes p as tcpmd5 watch -json prints it:
// {"time","remote","local","reason","flags","count"}, time the last drop's
// in RFC 3339, addresses as "addr:port", count the drops of that line so
// far; remote, local and flags are null where the kernel's counters, which
// name no one, stand in for its drop events.
func (p Peer) MarshalJSON() ([]byte, error) {
	name := func(a netip.AddrPort) *string {
		if !a.IsValid() {
			return nil
		}
		s := a.String()
		return &s
	}
	var flags *string
	if p.Flags != "" {
		flags = &p.Flags
	}
	return json.Marshal(struct {
		Time   time.Time    `json:"time"`
		Remote *string      `json:"remote"`
		Local  *string      `json:"local"`
		Reason drops.Reason `json:"reason"`
		Flags  *string      `json:"flags"`
		Count  uint64       `json:"count"`
	}{p.Last, name(p.Remote), name(p.Local), p.Reason, flags, p.Count})
}

// Tally counts drops by peer address, local address and port, and reason:
// a peer retrying from new source ports is one line. It keeps at most
// Limit lines (0 means 4096); the drops of further peers are counted in
// Others, so that a flood from many sources costs bounded memory. A Tally
// is not safe for concurrent use.
type Tally struct {
	Limit  int
	Others uint64 // drops of peers past Limit
	peers  map[key]*Peer
}

type key struct {
	remote netip.Addr
	local  netip.AddrPort
	reason drops.Reason
}

// Add counts d.
func (t *Tally) Add(d drops.Drop) {
	k := key{d.Remote.Addr(), d.Local, d.Reason}
	p, ok := t.peers[k]
	if !ok {
		if len(t.peers) >= cmp.Or(t.Limit, 4096) {
			t.Others++
			return
		}
		if t.peers == nil {
			t.peers = make(map[key]*Peer)
		}
		p = &Peer{Local: d.Local, Reason: d.Reason, First: d.Time}
		t.peers[k] = p
	}
	p.Remote, p.Flags, p.Last = d.Remote, d.Flags, d.Time
	p.Count++
}

// Peers returns the lines, the most recent first.
func (t *Tally) Peers() []Peer {
	out := make([]Peer, 0, len(t.peers))
	for _, p := range t.peers {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Peer) int {
		return cmp.Or(b.Last.Compare(a.Last), a.Remote.Compare(b.Remote), a.Local.Compare(b.Local), strings.Compare(string(a.Reason), string(b.Reason)))
	})
	return out
}

// Total returns every drop counted, Others included.
func (t *Tally) Total() uint64 {
	n := t.Others
	for _, p := range t.peers {
		n += p.Count
	}
	return n
}
