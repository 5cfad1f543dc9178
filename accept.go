package tcpmd5

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// Refusal is a connection that Accept closed with a reset, as
// [ListenConfig.OnRefuse] is told of it.
type Refusal struct {
	Remote, Local netip.AddrPort // the peer, and the listener's address it reached
	Reason        RefusalReason
}

// RefusalReason says why Accept refused a connection. Its values are the
// reasons tcpmd5 listen prints.
type RefusalReason string

// The reasons Accept refuses a connection the kernel completed.
const (
	// RefusedNoKey: the connection is unsigned, no key covers its peer, and
	// the listener does not allow unsigned peers. The peer is reachable
	// but we hold no key for it: add one, or set AllowUnsigned.
	RefusedNoKey RefusalReason = "no-key"
	// RefusedKeyAdded: the connection is unsigned, and a key that covers
	// its peer came after its handshake: the peer holds no key for us.
	RefusedKeyAdded RefusalReason = "key-added"
	// RefusedUnreadable: what the kernel did with the handshake could not
	// be read (the connection ended first, or a getsockopt(2) failed).
	RefusedUnreadable RefusalReason = "unreadable"
)

// accepted is a connection, judged, from one socket of the
// group.
type accepted struct {
	c     *net.TCPConn
	admit bool          // the Accept policy hands c over
	why   RefusalReason // if not

	// An unsigned connection admitted because no key covered its peer:
	// Accept asks again when it hands it over.
	unsigned bool
	peer     netip.Addr
	l3index  int
}

// close closes the connection of a, if it has one.
func (a accepted) close() {
	if a.c != nil {
		a.c.Close()
	}
}

// judge decides whether Accept hands over connection c, which socket s
// accepted: if the kernel verified its handshake with a key, or if c is
// unsigned, unsigned peers are allowed and no key covers its peer (which
// Accept asks again when it hands c over). l.mu is held, for reading at
// least.
//
// The invariant that makes this exact: every connection in the accept
// queue of s completed its handshake after the last change to which peers
// the keys of s cover, MD5 and AO each, because each such change takes
// the queue's connections off it (drain). The kernel completes no unsigned
// handshake with a covered peer, none but an AO one with a peer an AO key
// covers, and copies the key to every verified one, so c was verified if
// and only if the keys of s cover its peer now. For c taken off the queue
// during a change, during holds the MD5 keys added or removed: a peer
// whose cover that change flipped is asked of c's own key (md5Held); and
// while an AO change is judged (s.askAO), c is asked for its AO state.
// Whatever cannot be read is refused.
func (l *Listener) judge(s *shard, c *net.TCPConn, during []Key) accepted {
	refuse := accepted{c: c, why: RefusedUnreadable}
	// The descriptor is asked only where keys make the answer differ; c is
	// a connection, not nil, so SyscallConn cannot fail.
	raw := func() syscall.RawConn { rc, _ := c.SyscallConn(); return rc }
	if s.askAO {
		if ao, err := acceptedAO(raw()); err != nil {
			return refuse
		} else if ao {
			return accepted{c: c, admit: true}
		}
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return refuse
	}
	addr, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return refuse
	}
	addr = addr.Unmap()
	l3index := 0
	if l.keys.interfaces() > 0 {
		var err error
		if l3index, err = boundIfindex(raw()); err != nil {
			return refuse
		}
	}
	if !s.askAO && s.keys.ao.covers(addr, l3index) {
		return accepted{c: c, admit: true}
	}
	signed := s.keys.md5.covers(addr, l3index)
	if k, ok := flipped(&s.keys.md5, during, addr, l3index); ok {
		var err error
		if signed, err = md5Held(raw(), addr, k.Ifindex, k.Secret); err != nil {
			return refuse
		}
	}
	switch {
	case signed:
		return accepted{c: c, admit: true}
	case l.keys.covers(addr, l3index):
		return accepted{c: c, why: RefusedKeyAdded}
	case l.allowUnsigned:
		return accepted{c: c, admit: true, unsigned: true, peer: addr, l3index: l3index}
	}
	return accepted{c: c, why: RefusedNoKey}
}

// stillUncovered reports whether no key covers the peer of a, an unsigned
// connection, now that Accept hands it over.
func (l *Listener) stillUncovered(a accepted) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return !l.keys.covers(a.peer, a.l3index)
}

// flipped returns the key of changed, added to t or removed from it, that
// alone decides whether t covers addr on l3index: the only key whose copy a
// connection from addr can hold if its handshake completed during the
// change. A peer no key of changed covers, or that other keys of t cover
// too, was covered or not before and after alike.
func flipped(t *keyTable[Key], changed []Key, addr netip.Addr, l3index int) (Key, bool) {
	for _, k := range changed {
		if k.Peer.Contains(addr) && (k.Ifindex == 0 || k.Ifindex == l3index) && !t.coversExcept(addr, l3index, k.id()) {
			return k, true
		}
	}
	return Key{}, false
}

// drain takes the connections queued on s off its queue and judges them,
// during being the MD5 keys just added to s or removed from it (nil before
// a change, and for an AO change, which s.askAO marks), and hands them to
// Accept; it keeps judge's invariant across a change to the peers the keys
// of s cover. An MD5 change that removes keys drains before (so that
// connections verified with them are judged signed) and after (for those
// that completed meanwhile); one that adds keys drains after. l.mu is
// held, so nothing else accepts on s, and accept(2) does not wait while
// the queue is not empty.
func (l *Listener) drain(s *shard, during []Key) error {
	var judged []accepted
	var err error
	for queued(s.rc) {
		var c *net.TCPConn
		if c, err = s.ln.AcceptTCP(); err != nil {
			err = fmt.Errorf("tcpmd5: taking the connections that waited for a key change: %w", err)
			break
		}
		judged = append(judged, l.judge(s, c, during))
	}
	if len(judged) > 0 {
		l.fan.push(judged)
	}
	return err
}
