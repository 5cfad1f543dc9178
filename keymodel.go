package tcpmd5

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// liveKey is what the steps a key takes on a live listener (place,
// install, roll back, remove, list) need of its kind, [Key] or [AOKey], so
// that the steps are written once, below, and SetKey and SetAOKey, RemoveKey
// and RemoveAOKey, Keys and AOKeys stay thin.
type liveKey[K tableKey] interface {
	tableKey
	of(*keySet) *keyTable[K] // the table of K's kind
	label() string           // the key, as errors name it
	clone() K                // with its own copy of the secret
	bare() K                 // without its secret, as a socket's table holds it
	clash(*keySet) error     // refuses a key of the other kind for overlapping peers
	compare(K) int           // the order Keys and AOKeys list in

	// The kernel's side, on socket s of l, with l.mu held: each keeps
	// judge's invariant for K's kind where it can do so alone.
	add(l *Listener, s *shard) error            // install on s, which holds no key with its id
	replace(l *Listener, s *shard, old K) error // install in the place of old, which has its id; errKeyLost if neither stays
	del(l *Listener, s *shard) error            // delete; one not there is not an error
	settle(l *Listener, s *shard) error         // what follows its install on s, where it is new
}

func (Key) of(s *keySet) *keyTable[Key]     { return &s.md5 }
func (AOKey) of(s *keySet) *keyTable[AOKey] { return &s.ao }

func (k Key) label() string   { return "key for " + k.peerString() }
func (k AOKey) label() string { return "AO key " + k.name() }

func (k Key) bare() Key     { return Key{Peer: k.Peer, Ifindex: k.Ifindex} }
func (k AOKey) bare() AOKey { k.Secret = nil; return k }

func (k Key) clash(s *keySet) error {
	if ao, ok := s.ao.overlapping(k.Peer, k.Ifindex); ok {
		return mixedKeysError(k, ao)
	}
	return nil
}

func (k AOKey) clash(s *keySet) error {
	if md5, ok := s.md5.overlapping(k.Peer, k.Ifindex); ok {
		return mixedKeysError(md5, k)
	}
	return nil
}

func (k Key) compare(o Key) int {
	return cmp.Or(k.Peer.Addr().Compare(o.Peer.Addr()), cmp.Compare(k.Peer.Bits(), o.Peer.Bits()),
		cmp.Compare(k.Ifindex, o.Ifindex))
}

func (k AOKey) compare(o AOKey) int {
	return cmp.Or(k.Peer.Addr().Compare(o.Peer.Addr()), cmp.Compare(k.Peer.Bits(), o.Peer.Bits()),
		cmp.Compare(k.Ifindex, o.Ifindex), cmp.Compare(k.SendID, o.SendID), cmp.Compare(k.RecvID, o.RecvID))
}

// An MD5 key replaces the one with its id in place; its changes are
// judged by the drains around them (settle, removeFrom).
func (k Key) add(_ *Listener, s *shard) error            { return setKey(s.rc, s.family, k) }
func (k Key) replace(_ *Listener, s *shard, _ Key) error { return setKey(s.rc, s.family, k) }
func (k Key) del(_ *Listener, s *shard) error            { return removeKey(s.rc, s.family, k) }

// A TCP-AO key's every change goes through askingAO.
func (k AOKey) add(l *Listener, s *shard) error {
	return l.askingAO(s, k, func() error { return addAOKey(s.rc, s.family, k) })
}

func (k AOKey) del(l *Listener, s *shard) error {
	return l.askingAO(s, k, func() error { return removeAOKey(s.rc, s.family, k) })
}

// replace puts k in the place of old: the kernel replaces no AO key in
// place, so old is deleted first, and goes back if k fails. Between the
// two, no key covers their peers, and an unsigned handshake can complete:
// askingAO judges it by what the kernel did.
func (k AOKey) replace(l *Listener, s *shard, old AOKey) error {
	return l.askingAO(s, k, func() error {
		if err := removeAOKey(s.rc, s.family, old); err != nil {
			return err
		}
		if l.replacing != nil {
			l.replacing()
		}
		if err := addAOKey(s.rc, s.family, k); err != nil {
			if addAOKey(s.rc, s.family, old) != nil {
				return fmt.Errorf("%w; the key it replaced could not go back (%w)", err, errKeyLost)
			}
			return err
		}
		return nil
	})
}

// errKeyLost: a replaced key could not go back on a socket after its
// replacement failed, so the socket holds neither.
var errKeyLost = errors.New("the socket holds neither key")

// settle keeps judge's invariant on s after k, new there, went on it: if
// k changed which peers s covers, the queue of s is drained and judged.
func (k Key) settle(l *Listener, s *shard) error {
	if !flips(&s.keys.md5, k) {
		return nil
	}
	return l.drain(s, []Key{k})
}

// settle has nothing to do: askingAO judged the queue of s when k went on.
func (AOKey) settle(*Listener, *shard) error { return nil }

// askingAO runs change, which adds or deletes the AO key k on s, l.mu
// held, keeping judge's invariant for AO keys: every connection in the
// queue of s completed its handshake after the last change to which peers
// the AO keys of s cover. Where k alone decides whether s covers its peers
// (flips), Accept asks each connection of s for its AO state instead
// (s.askAO), from before the change until a drain after it has judged the
// queue. A drain that cannot take every connection (out of descriptors)
// leaves Accept asking on s until one does: never a verdict the keys
// cannot back.
func (l *Listener) askingAO(s *shard, k AOKey, change func() error) error {
	if !flips(&s.keys.ao, k) {
		return change()
	}
	s.askAO = true
	err := change()
	if l.drain(s, nil) == nil {
		s.askAO = false
	}
	return err
}

// setLive installs k, normalized, on the live listener l, or replaces the
// key with its id: room is made (place), then k goes on the sockets that
// need it, or on none (installOn).
func setLive[K liveKey[K]](l *Listener, k K) error {
	l.changing.Lock()
	defer l.changing.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.open(); err != nil {
		return fmt.Errorf("tcpmd5: %s: %w", k.label(), err)
	}
	if err := k.clash(&l.keys); err != nil {
		return err
	}
	old, installed := k.of(&l.keys).get(k.id())
	return l.place(k.id(), installed, func() (*shard, error) { return installOn(l, k, old, installed) })
}

// installOn puts k in the registry and on the sockets that need it, a host
// key on the one shardOf picks and a prefix key on all, in place of old if
// had, or on none. Each socket gets k and, where k is new, has its queue
// judged (settle) before the next, and between two the listener lets
// Accept in (stepwise), so that a prefix key keeps Accept waiting for one
// socket's step at a time, not for the group's. After a failure it puts
// old back, or deletes k, on the sockets done, and returns the socket that
// refused k, if the kernel did. l.mu and l.changing are held.
func installOn[K liveKey[K]](l *Listener, k, old K, had bool) (*shard, error) {
	// In the registry first: a socket without k yet refuses an unsigned
	// connection from k's peers as one that a key now covers.
	k.of(&l.keys).set(k.clone())
	targets := l.holders(k.id().peer)
	var refused *shard
	done, err := l.stepwise(targets, func(s *shard) (err error) {
		refused, err = installOne(l, k, old, had, s)
		return err
	})
	if err == nil {
		return nil, nil
	}
	_, _ = l.stepwise(targets[:done], func(s *shard) error { takeBack(l, k, old, had, s); return nil })
	if had {
		k.of(&l.keys).set(old)
	} else {
		k.of(&l.keys).remove(k.id())
	}
	return refused, err
}

// installOne puts k on s, in place of old if had, and settles it where it
// is new; a failure leaves s as it was, and returns s if the kernel
// refused k. A key it cannot take back after a failed settle leaves s
// refusing, never admitting: its queue is judged by the keys s holds.
func installOne[K liveKey[K]](l *Listener, k, old K, had bool, s *shard) (*shard, error) {
	var err error
	if had {
		err = k.replace(l, s, old)
	} else {
		err = k.add(l, s)
	}
	if errors.Is(err, errKeyLost) {
		k.of(&s.keys).remove(k.id()) // its peers are refused, never taken for covered
	}
	if err != nil {
		return s, err
	}
	k.of(&s.keys).set(k.bare())
	if had {
		return nil, nil
	}
	if err := k.settle(l, s); err != nil {
		takeBack(l, k, old, had, s)
		return nil, fmt.Errorf("%w; the %s was not installed", err, k.label())
	}
	return nil, nil
}

// takeBack undoes k on s, which holds it: old goes back in its place if
// had, else k is deleted. What the kernel refuses to undo stays, and the
// table of s says what s holds.
func takeBack[K liveKey[K]](l *Listener, k, old K, had bool, s *shard) {
	var err error
	if had {
		err = old.replace(l, s, k)
	} else {
		err = k.del(l, s)
	}
	switch {
	case err == nil && had:
		k.of(&s.keys).set(old.bare())
	case err == nil || errors.Is(err, errKeyLost):
		k.of(&s.keys).remove(k.id())
	}
}

// removeLive deletes the key with k's id from the live listener l and
// from every socket that holds it; one that is not there is not an error.
// A socket that fails to let it go (out of descriptors while it judges
// its queue, say) stops the removal, and the key goes back on the sockets
// done (putBack): a failed removal changes nothing.
func removeLive[K liveKey[K]](l *Listener, k K) error {
	id := k.id()
	l.changing.Lock()
	defer l.changing.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	old, ok := k.of(&l.keys).get(id)
	if !ok {
		return nil
	}
	var holding []*shard
	for _, s := range l.shards {
		if _, ok := k.of(&s.keys).get(id); ok {
			holding = append(holding, s)
		}
	}
	done, err := l.stepwise(holding, func(s *shard) error { return removeFrom(l, s, old) })
	if err != nil {
		if berr := putBack(l, old, holding[:done]); berr != nil {
			return fmt.Errorf("%w; putting the key back failed too, so some sockets refuse its peers: %w", err, berr)
		}
		return fmt.Errorf("%w; the key stays on the listener", err)
	}
	k.of(&l.keys).remove(id)
	return nil
}

// putBack installs k again on the sockets a failed removal took it off,
// each settled as a new key is, and returns the first failure: a socket
// that cannot take k back goes on without it, refusing its peers (the
// registry still covers them). l.mu and l.changing are held.
func putBack[K liveKey[K]](l *Listener, k K, shards []*shard) error {
	var zero K
	var first error
	_, _ = l.stepwise(shards, func(s *shard) error {
		if _, err := installOne(l, k, zero, false, s); err != nil && first == nil {
			first = err
		}
		return nil
	})
	return first
}

// removeFrom deletes keys, with their secrets, from s, keeping judge's
// invariant where they are MD5 keys that change which peers s covers (an
// AO key's del keeps it for AO keys): the
// connections they verified are judged before they go, and those that
// completed while they went are judged after. What the second drain cannot
// take stays queued and is judged unsigned: refused, never let in. It
// stops at the first key the kernel does not delete. l.mu is held.
func removeFrom[K liveKey[K]](l *Listener, s *shard, keys ...K) error {
	var md5 []Key // an AO key's del judges its own change (askingAO)
	for _, k := range keys {
		if m, ok := any(k).(Key); ok {
			md5 = append(md5, m)
		}
	}
	flipping := slices.ContainsFunc(md5, func(k Key) bool { return flips(&s.keys.md5, k) })
	if flipping {
		if err := l.drain(s, nil); err != nil {
			return err
		}
	}
	var err error
	var removed []Key
	for _, k := range keys {
		if err = k.del(l, s); err != nil {
			break
		}
		k.of(&s.keys).remove(k.id())
		if m, ok := any(k).(Key); ok {
			removed = append(removed, m)
		}
	}
	if flipping {
		_ = l.drain(s, removed)
	}
	return err
}

// moveBack installs on into the host keys of K's kind that last holds,
// with their secrets from l, and returns them; it stops at the first the
// kernel refuses. l.mu is held.
func moveBack[K liveKey[K]](l *Listener, last, into *shard) ([]K, error) {
	var zero K
	var back []K
	for id := range zero.of(&last.keys).hosts {
		k := zero.of(&l.keys).hosts[id]
		if err := k.add(l, into); err != nil {
			return back, err
		}
		k.of(&into.keys).set(k.bare())
		back = append(back, k)
	}
	return back, nil
}

// list returns copies of the keys of t in K's order.
func list[K liveKey[K]](t *keyTable[K]) []K {
	out := make([]K, 0, t.len())
	for k := range t.all() {
		out = append(out, k.clone())
	}
	slices.SortFunc(out, K.compare)
	return out
}
