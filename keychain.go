package tcpmd5

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Lifetime is when a key of a [KeyChain] is sent or accepted (RFC 8177):
// from From, included, until Until, excluded. A zero From has already
// begun; a zero Until never ends.
type Lifetime struct{ From, Until time.Time }

// open reports whether t falls in the lifetime.
func (l Lifetime) open(t time.Time) bool {
	return (l.From.IsZero() || !t.Before(l.From)) && (l.Until.IsZero() || t.Before(l.Until))
}

// KeyChain holds keys that take over from each other on a schedule, as
// routers' key chains do (RFC 8177), and keeps every [Listener] and
// [Dialer] it is attached to ([ListenConfig.KeyChain], [Dialer.KeyChain]),
// and every live connection they returned, in step with it: at each
// lifetime boundary, and at once after each edit. It is safe for
// concurrent use; one chain may serve many listeners and dialers.
//
// TCP-AO keys (RFC 5925) have a send and an accept lifetime. A key is on
// the listeners' sockets and on every live connection of a peer it covers
// while either lifetime is open, and nowhere once both have ended. Of a
// peer's keys, the one whose send lifetime began last and has not ended
// is preferred: a Dialer signs the SYN with it, and when its send
// lifetime begins, each live connection makes it current and asks the
// peer for it (RNextKeyID). When a key ends while a connection still signs
// with it (its peer keeps asking for it), it is deleted with the preferred
// key made current and asked for in the same call, and [KeyChain.Sessions]
// reports the connection as lagging. A peer's keys are those of the
// longest Peer prefix that holds its address, as for a Dialer.
//
// MD5 keys (RFC 2385) have a start: for each Peer and Ifindex the key with
// the latest start not in the future signs. At its start the chain
// replaces the secret on the listeners' sockets and on every live
// connection (setsockopt(2) TCP_MD5SIG on the same entry overwrites the
// secret in place); the peer must switch within TCP's retransmissions,
// meanwhile each end drops the other's segments and TCP sends them again.
//
// Live connections are held weakly: one the program drops is not kept
// alive, and one that is closed is forgotten. The chain runs one timer,
// for its next boundary, and no goroutine per connection.
type KeyChain struct {
	mu        sync.Mutex
	md5       map[keyID][]chainMD5 // by Peer and Ifindex, sorted by from
	ao        map[keyID]chainAO
	listeners map[*Listener]*keySet // what the chain installed on each
	sessions  []*session
	swept     int // len(sessions) after the last sweep
	timer     *time.Timer
	next      time.Time  // the boundary timer is set for; zero for none
	dial      *dialTable // the keys a Dialer uses now; nil when stale
	seq       int        // chainAO.seq of the last key added
}

type chainMD5 struct {
	key  Key
	from time.Time
}

type chainAO struct {
	key          AOKey
	send, accept Lifetime
	seq          int // the order keys joined the chain: of keys alike, the first is preferred
}

// NewKeyChain returns an empty chain.
func NewKeyChain() *KeyChain {
	return &KeyChain{md5: make(map[keyID][]chainMD5), ao: make(map[keyID]chainAO), listeners: make(map[*Listener]*keySet)}
}

// SetAOKey adds k to the chain, sent during send and accepted during
// accept, or replaces the lifetimes of the key with its Peer, SendID,
// RecvID and Ifindex, and applies the chain at once. A key's secret,
// algorithm and MAC length cannot change: that is a new key, with new
// KeyIDs. Its error joins every failure of applying it (a listener or
// connection that refused a key), each of which [KeyChain.Sessions]
// reports too; the others are applied all the same.
func (c *KeyChain) SetAOKey(k AOKey, send, accept Lifetime) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, o := range c.ao {
		if id != k.id() && o.key.Peer == k.Peer && o.key.Ifindex == k.Ifindex && (o.key.SendID == k.SendID) != (o.key.RecvID == k.RecvID) {
			return fmt.Errorf("tcpmd5: AO key %s shares one KeyID only with %s: give both new KeyIDs", k.name(), o.key.name())
		}
	}
	old, ok := c.ao[k.id()]
	if ok && !sameMKT(old.key, k) {
		// A live connection cannot take another secret under the same
		// KeyIDs: the kernel replaces no key in place, nor deletes the one
		// a connection signs with (RFC 5925's MKTs are fixed).
		return fmt.Errorf("tcpmd5: AO key %s: another secret, algorithm or MAC needs new KeyIDs", k.name())
	}
	seq := old.seq
	if !ok {
		c.seq++
		seq = c.seq
	}
	c.ao[k.id()] = chainAO{k.clone(), send, accept, seq}
	return c.applyLocked(time.Now())
}

// sameMKT reports whether a and b, keys with the same Peer, KeyIDs and
// Ifindex, sign alike.
func sameMKT(a, b AOKey) bool {
	return bytes.Equal(a.Secret, b.Secret) && a.Algorithm == b.Algorithm && a.MACLen == b.MACLen && a.ExcludeOptions == b.ExcludeOptions
}

// RemoveAOKey deletes the key with k's Peer, SendID, RecvID and Ifindex
// from the chain and from every socket and live connection; the secret and
// lifetimes are ignored. A key still current on a connection goes with the
// preferred key made current, as at the end of its lifetimes.
func (c *KeyChain) RemoveAOKey(k AOKey) error {
	peer, err := Key{Peer: k.Peer, Ifindex: k.Ifindex}.normalizePeer()
	if err != nil {
		return err
	}
	k.Peer = peer.Peer
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.ao[k.id()]
	if !ok {
		return nil
	}
	// Ended now: applying deletes it everywhere, then the chain forgets it.
	o.send, o.accept = Lifetime{Until: time.Unix(1, 0)}, Lifetime{Until: time.Unix(1, 0)}
	c.ao[k.id()] = o
	err = c.applyLocked(time.Now())
	delete(c.ao, k.id())
	c.dial = nil
	return err
}

// SetKey makes k the MD5 key for k.Peer and k.Ifindex from from on (zero:
// already), replacing a key of the chain with the same start, and applies
// the chain at once; its error is that of [KeyChain.SetAOKey].
func (c *KeyChain) SetKey(k Key, from time.Time) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	entries := slices.DeleteFunc(c.md5[k.id()], func(e chainMD5) bool { return e.from.Equal(from) })
	entries = append(entries, chainMD5{k.clone(), from})
	slices.SortFunc(entries, func(a, b chainMD5) int { return a.from.Compare(b.from) })
	c.md5[k.id()] = entries
	return c.applyMD5Locked(k.id(), time.Now(), from)
}

// signingMD5 returns the key of id that signs at t, if any.
func (c *KeyChain) signingMD5(id keyID, t time.Time) (Key, bool) {
	var signs *Key
	for i, e := range c.md5[id] {
		if !e.from.After(t) {
			signs = &c.md5[id][i].key
		}
	}
	if signs == nil {
		return Key{}, false
	}
	return *signs, true
}

// applyMD5Locked applies an edit of the MD5 keys of id alone, at t, to the
// listeners and the live connections, and sets the timer for boundary if
// it comes first: an edit costs what that peer's keys cost, however many
// keys the chain holds. c.mu is held.
func (c *KeyChain) applyMD5Locked(id keyID, t, boundary time.Time) error {
	c.dial = nil
	k, signs := c.signingMD5(id, t)
	var errs []error
	for l, installed := range c.listeners {
		old, held := installed.md5.get(id)
		switch {
		case signs && (!held || !bytes.Equal(old.Secret, k.Secret)):
			if err := setLive(l, k); err != nil {
				errs = append(errs, fmt.Errorf("tcpmd5: listener %s: %w", l.Addr(), err))
				continue
			}
			installed.md5.set(k)
		case !signs && held:
			if err := removeLive(l, old); err != nil {
				errs = append(errs, fmt.Errorf("tcpmd5: listener %s: %w", l.Addr(), err))
				continue
			}
			installed.md5.remove(id)
		}
	}
	if signs {
		for _, s := range c.sessions {
			if s.md5 == nil || s.md5.id() != id {
				continue
			}
			if conn := s.conn.Value(); conn != nil {
				if err := s.applyMD5(conn, k); err != nil && !errors.Is(err, net.ErrClosed) {
					errs = append(errs, fmt.Errorf("tcpmd5: connection %s to %s: %w", s.local, s.remote, err))
				}
			}
		}
	}
	if boundary.After(t) && (c.next.IsZero() || boundary.Before(c.next)) {
		c.next = time.Time{} // schedule recomputes it
		c.schedule(t)
	}
	return errors.Join(errs...)
}

// RemoveKey deletes the MD5 key for k.Peer and k.Ifindex that starts at
// from; the secret is ignored. The key of an earlier start, if any, signs
// again. With none left, the listeners' sockets lose the key, so that the
// peer is refused, and live connections keep the one they hold: an
// established connection without it would drop every segment of its peer.
func (c *KeyChain) RemoveKey(k Key, from time.Time) error {
	k, err := k.normalizePeer()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	entries := slices.DeleteFunc(c.md5[k.id()], func(e chainMD5) bool { return e.from.Equal(from) })
	if len(entries) == 0 {
		delete(c.md5, k.id())
	} else {
		c.md5[k.id()] = entries
	}
	// A boundary it had may still wake the timer: applying then is harmless.
	return c.applyMD5Locked(k.id(), time.Now(), time.Time{})
}

// chainState is what the chain holds at one moment.
type chainState struct {
	md5 keyTable[Key]   // the key that signs, per Peer and Ifindex
	ao  keyTable[AOKey] // every AO key of the chain, ended or not
	at  time.Time
}

// stateLocked returns the chain at t. c.mu is held.
func (c *KeyChain) stateLocked(t time.Time) *chainState {
	st := &chainState{at: t}
	for id := range c.md5 {
		if k, ok := c.signingMD5(id, t); ok {
			st.md5.set(k)
		}
	}
	for _, o := range c.ao {
		st.ao.set(o.key)
	}
	return st
}

// aoOn reports whether k is to be on sockets at t.
func (c *KeyChain) aoOn(k AOKey, t time.Time) bool {
	o := c.ao[k.id()]
	return o.send.open(t) || o.accept.open(t)
}

// preferred returns, of keys, the one whose send lifetime began last and
// is open at t; of those that began together, the first to join the chain.
func (c *KeyChain) preferred(keys []AOKey, t time.Time) (AOKey, bool) {
	var best chainAO
	found := false
	for _, k := range keys {
		o := c.ao[k.id()]
		if o.send.open(t) && (!found || c.before(o, best, t) < 0) {
			best, found = o, true
		}
	}
	return best.key, found
}

// before orders a and b as a dial prefers them at t: an open send lifetime
// first, then the one that began last, then the first to join the chain.
func (c *KeyChain) before(a, b chainAO, t time.Time) int {
	ao, bo := a.send.open(t), b.send.open(t)
	switch {
	case ao && !bo:
		return -1
	case bo && !ao:
		return 1
	}
	if r := b.send.From.Compare(a.send.From); r != 0 {
		return r
	}
	return a.seq - b.seq
}

// nextBoundary returns the first lifetime boundary after t, or zero.
func (c *KeyChain) nextBoundary(t time.Time) time.Time {
	var next time.Time
	consider := func(b time.Time) {
		if b.After(t) && (next.IsZero() || b.Before(next)) {
			next = b
		}
	}
	for _, entries := range c.md5 {
		for _, e := range entries {
			consider(e.from)
		}
	}
	for _, o := range c.ao {
		for _, b := range []time.Time{o.send.From, o.send.Until, o.accept.From, o.accept.Until} {
			consider(b)
		}
	}
	return next
}

// applyLocked makes every listener and live connection hold the chain at
// t and sets the timer for the next boundary. c.mu is held.
func (c *KeyChain) applyLocked(t time.Time) error {
	st := c.stateLocked(t)
	c.dial = nil
	var errs []error
	for l, installed := range c.listeners {
		if err := c.applyListener(l, installed, st); err != nil {
			errs = append(errs, fmt.Errorf("tcpmd5: listener %s: %w", l.Addr(), err))
		}
	}
	live := c.sessions[:0]
	for _, s := range c.sessions {
		conn := s.conn.Value()
		if conn == nil {
			continue
		}
		err := c.applySession(s, conn, st)
		if errors.Is(err, net.ErrClosed) {
			continue
		}
		live = append(live, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("tcpmd5: connection %s to %s: %w", s.local, s.remote, err))
		}
	}
	clear(c.sessions[len(live):])
	c.sessions, c.swept = live, len(live)
	c.schedule(t)
	return errors.Join(errs...)
}

// schedule sets the timer for the first boundary after t.
func (c *KeyChain) schedule(t time.Time) {
	next := c.nextBoundary(t)
	if next.Equal(c.next) {
		return
	}
	c.next = next
	if c.timer != nil {
		c.timer.Stop()
	}
	if next.IsZero() {
		return
	}
	c.timer = time.AfterFunc(time.Until(next), func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.next = time.Time{}
		_ = c.applyLocked(time.Now()) // each failure is in Sessions
	})
}

// applyListener makes l hold st's keys beside its own: installed is what
// the chain put on it before.
func (c *KeyChain) applyListener(l *Listener, installed *keySet, st *chainState) error {
	var errs []error
	for k := range st.md5.all() {
		if old, ok := installed.md5.get(k.id()); !ok || !bytes.Equal(old.Secret, k.Secret) {
			if err := setLive(l, k); err != nil {
				errs = append(errs, err)
				continue
			}
			installed.md5.set(k)
		}
	}
	for k := range installed.md5.all() { // no key of the chain left for its peer
		if _, ok := st.md5.get(k.id()); !ok {
			if err := removeLive(l, k); err != nil {
				errs = append(errs, err)
				continue
			}
			installed.md5.remove(k.id())
		}
	}
	for k := range st.ao.all() {
		_, on := installed.ao.get(k.id())
		switch want := c.aoOn(k, st.at); {
		case want && !on:
			if err := setLive(l, k); err != nil {
				errs = append(errs, err)
				continue
			}
			installed.ao.set(k)
		case !want && on:
			if err := removeLive(l, k); err != nil {
				errs = append(errs, err)
				continue
			}
			installed.ao.remove(k.id())
		}
	}
	for k := range installed.ao.all() { // removed from the chain
		if _, ok := st.ao.get(k.id()); !ok {
			if err := removeLive(l, k); err == nil {
				installed.ao.remove(k.id())
			}
		}
	}
	return errors.Join(errs...)
}

// current returns the keys the chain puts on a listener now, for Listen to
// install before the socket listens.
func (c *KeyChain) current() ([]Key, []AOKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	st := c.stateLocked(now)
	keys := slices.Collect(st.md5.all())
	var aoKeys []AOKey
	for k := range st.ao.all() {
		if c.aoOn(k, now) {
			aoKeys = append(aoKeys, k)
		}
	}
	return keys, aoKeys
}

// attach makes the chain keep l in step: installed are the chain's keys
// Listen put on it (current), and anything the chain changed since goes on
// now.
func (c *KeyChain) attach(l *Listener, installed *keySet) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listeners[l] = installed
	return c.applyListener(l, installed, c.stateLocked(time.Now()))
}

// detach forgets l, which is closing.
func (c *KeyChain) detach(l *Listener) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.listeners, l)
}

// overlaps returns an error if a key of keys or aoKeys covers peers a key
// of the chain covers too: one of the two would sign.
func (c *KeyChain) overlaps(keys []Key, aoKeys []AOKey) error {
	var own []netip.Prefix
	for _, k := range keys {
		own = append(own, k.Peer)
	}
	for _, k := range aoKeys {
		own = append(own, k.Peer)
	}
	return c.overlapsPeers(own...)
}

// overlapsPeers is overlaps for peer prefixes.
func (c *KeyChain) overlapsPeers(own ...netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range own {
		for id := range c.md5 {
			if id.peer.Overlaps(p) {
				return fmt.Errorf("tcpmd5: the key for %s overlaps the chain's for %s: give a peer keys in one place", p, id.peer)
			}
		}
		for id := range c.ao {
			if id.peer.Overlaps(p) {
				return fmt.Errorf("tcpmd5: the key for %s overlaps the chain's for %s: give a peer keys in one place", p, id.peer)
			}
		}
	}
	return nil
}

// dialTable returns the keys a Dialer uses now: for each peer the MD5 key
// that signs, and the AO keys that are on, the preferred one first, so
// that it signs the SYN.
func (c *KeyChain) dialTable() *dialTable {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dial != nil {
		return c.dial
	}
	now := time.Now()
	st := c.stateLocked(now)
	var on []AOKey
	for k := range st.ao.all() {
		if c.aoOn(k, now) {
			on = append(on, k)
		}
	}
	// Preferred keys first: the table keeps a peer's keys in the order set.
	slices.SortFunc(on, func(a, b AOKey) int { return c.before(c.ao[a.id()], c.ao[b.id()], now) })
	c.dial = newDialTable(slices.Collect(st.md5.all()), on)
	return c.dial
}
