package tcpmd5

import (
	"fmt"
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
// Ifindex is replaced (the kernel deletes it, then adds k; an unsigned
// handshake that completes between the two is refused). A host key
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
	if err := l.chained(k.Peer); err != nil {
		return err
	}
	return setLive(l, k)
}

// RemoveAOKey deletes the TCP-AO key with k's Peer, SendID, RecvID and
// Ifindex from the listener; the rest of k is ignored. Removing a key that
// is not installed is not an error. Connections already accepted keep
// their keys. A RemoveAOKey that fails puts the key back on the sockets it
// had left, as RemoveKey does.
func (l *Listener) RemoveAOKey(k AOKey) error {
	peer, err := Key{Peer: k.Peer, Ifindex: k.Ifindex}.normalizePeer()
	if err != nil {
		return err
	}
	k.Peer = peer.Peer
	if err := l.chained(k.Peer); err != nil {
		return err
	}
	return removeLive(l, k)
}

// AOKeys returns copies of the TCP-AO keys installed now, ordered by peer,
// interface and KeyIDs.
func (l *Listener) AOKeys() []AOKey {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return list(&l.keys.ao)
}
