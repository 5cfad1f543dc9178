package tcpmd5

import (
	"cmp"
	"fmt"
	"slices"
)

// normalizeAOKeys checks every AO key and returns normalized copies.
func normalizeAOKeys(keys []AOKey) ([]AOKey, error) { return normalizeAll(keys, AOKey.normalize) }

// clone returns k with its own copy of the secret.
func (k AOKey) clone() AOKey {
	k.Secret = append([]byte(nil), k.Secret...)
	return k
}

// mixedKeysError reports an MD5 key and an AO key for overlapping peers,
// which the kernel refuses on one socket (EKEYREJECTED).
func mixedKeysError(md5 Key, ao AOKey) error {
	return fmt.Errorf("tcpmd5: MD5 key %s and AO key %s overlap; a peer is MD5 or AO, not both: remove one", md5.peerString(), ao.name())
}

// SetAOKey installs the TCP-AO key k on the live listener, for handshakes
// that start afterwards; a key with the same Peer, SendID, RecvID and
// Ifindex is replaced (the kernel deletes it, then adds k). A host key
// costs setsockopt(2) calls on the socket that holds its peer, a prefix
// key on every socket of the group, and the group grows as for
// [Listener.SetKey]. An AO key whose peers overlap an MD5 key's is refused:
// a peer is MD5 or AO, never both. Connections already accepted keep their
// keys.
func (l *Listener) SetAOKey(k AOKey) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.open(); err != nil {
		return fmt.Errorf("tcpmd5: AO key %s: %w", k.name(), err)
	}
	if md5, ok := l.keys.overlapping(k.Peer, k.Ifindex); ok {
		return mixedKeysError(md5, k)
	}
	_, installed := l.aoKeys.get(k.id())
	if err := l.place(k.id(), installed, func() (*shard, error) { return l.installAO(k) }); err != nil {
		return err
	}
	l.aoKeys.set(k.clone())
	l.aoKeyed = true
	return nil
}

// installAO puts k on the sockets that need it, a host key on the one
// shardOf picks and a prefix key on all, or on none: after a failure it
// restores the earlier key with k's identity, or deletes k. It returns the
// socket that refused k.
func (l *Listener) installAO(k AOKey) (*shard, error) {
	targets := l.holders(k.Peer)
	old, had := l.aoKeys.get(k.id())
	for i, s := range targets {
		err := addAOKey(s.rc, s.family, k)
		if had {
			err = replaceAOKey(s.rc, s.family, k, old)
		}
		if err != nil {
			for _, done := range targets[:i] {
				if had {
					if replaceAOKey(done.rc, done.family, old, k) == nil { // k out, old back
						done.setAO(old)
					}
				} else if removeAOKey(done.rc, done.family, k) == nil {
					done.removeAO(k.id())
				}
			}
			return s, err
		}
		s.setAO(k)
	}
	return nil, nil
}

// RemoveAOKey deletes the TCP-AO key with k's Peer, SendID, RecvID and
// Ifindex from the listener; the rest of k is ignored. Removing a key that
// is not installed is not an error. Connections already accepted keep
// their keys.
func (l *Listener) RemoveAOKey(k AOKey) error {
	peer, err := Key{Peer: k.Peer, Ifindex: k.Ifindex}.normalizePeer()
	if err != nil {
		return err
	}
	k.Peer = peer.Peer
	id := k.id()
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.aoKeys.get(id); !ok {
		return nil
	}
	for _, s := range l.shards {
		if _, ok := s.aoKeys.get(id); ok {
			if err := removeAOKey(s.rc, s.family, k); err != nil {
				return err
			}
			s.removeAO(id)
		}
	}
	l.aoKeys.remove(id)
	return nil
}

// AOKeys returns copies of the TCP-AO keys installed now, ordered by peer,
// interface and KeyIDs.
func (l *Listener) AOKeys() []AOKey {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]AOKey, 0, l.aoKeys.len())
	for k := range l.aoKeys.all() {
		out = append(out, k.clone())
	}
	slices.SortFunc(out, func(a, b AOKey) int {
		return cmp.Or(a.Peer.Addr().Compare(b.Peer.Addr()), cmp.Compare(a.Peer.Bits(), b.Peer.Bits()),
			cmp.Compare(a.Ifindex, b.Ifindex), cmp.Compare(a.SendID, b.SendID), cmp.Compare(a.RecvID, b.RecvID))
	})
	return out
}
