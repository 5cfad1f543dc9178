package tcpmd5

import (
	"iter"
	"maps"
	"net/netip"
	"slices"
)

// keyID is what identifies a key to the kernel: the peer prefix and the
// interface, and for a TCP-AO key its SendID and RecvID. Installing an MD5
// key with the same keyID replaces the secret.
type keyID struct {
	peer           netip.Prefix
	ifindex        int
	sendID, recvID uint8 // TCP-AO keys only
}

// tableKey is a key a keyTable holds: a [Key] or an [AOKey].
type tableKey interface {
	id() keyID
}

func (k Key) id() keyID   { return keyID{peer: k.Peer, ifindex: k.Ifindex} }
func (k AOKey) id() keyID { return keyID{k.Peer, k.Ifindex, k.SendID, k.RecvID} }

// keyTable holds keys by what identifies them to the kernel, host keys (/32,
// /128) apart from prefix keys, the way a listener's group places them: a
// host key on the one socket that its peer's SYNs reach, a prefix key on
// every socket. It answers, in time independent of the number of keys,
// which keys the kernel would choose among for a peer.
type keyTable[K tableKey] struct {
	hosts, prefixes map[keyID]K
	peers           map[netip.Prefix][]keyID // the keys of each peer prefix, over interfaces and KeyIDs, in the order first set
	bits            *[2][129]int32           // peer prefixes per length: [0] IPv4, [1] IPv6; nil while empty
	interfaces      int                      // keys with an Ifindex

	// few is the ID of every key while there are at most fewKeys: covers
	// then walks it, a line or two of memory, where the maps cost a few
	// cache misses each (a connection's first look at them is cold).
	few []keyID
}

// fewKeys is the most keys a keyTable keeps in few.
const fewKeys = 8

// kind returns the map that holds keys like the one id names.
func (t *keyTable[K]) kind(id keyID) map[keyID]K {
	if id.peer.IsSingleIP() {
		return t.hosts
	}
	return t.prefixes
}

func (t *keyTable[K]) set(k K) {
	if t.hosts == nil {
		t.hosts, t.prefixes = make(map[keyID]K), make(map[keyID]K)
		t.peers = make(map[netip.Prefix][]keyID)
		t.bits = new([2][129]int32)
	}
	id := k.id()
	m := t.kind(id)
	_, had := m[id]
	m[id] = k
	if had {
		return
	}
	if len(t.peers[id.peer]) == 0 {
		t.bits[family(id.peer.Addr())][id.peer.Bits()]++
	}
	t.peers[id.peer] = append(t.peers[id.peer], id)
	if id.ifindex != 0 {
		t.interfaces++
	}
	if t.len() <= fewKeys {
		t.few = append(t.few, id)
	} else {
		t.few = nil
	}
}

func (t *keyTable[K]) remove(id keyID) {
	m := t.kind(id)
	if _, ok := m[id]; !ok {
		return
	}
	delete(m, id)
	if id.ifindex != 0 {
		t.interfaces--
	}
	ids := slices.DeleteFunc(t.peers[id.peer], func(other keyID) bool { return other == id })
	if len(ids) == 0 {
		delete(t.peers, id.peer)
		t.bits[family(id.peer.Addr())][id.peer.Bits()]--
	} else {
		t.peers[id.peer] = ids
	}
	t.few = nil
	if t.len() <= fewKeys {
		for _, ids := range t.peers {
			t.few = append(t.few, ids...)
		}
	}
}

func (t *keyTable[K]) get(id keyID) (K, bool) {
	k, ok := t.kind(id)[id]
	return k, ok
}

func (t *keyTable[K]) len() int { return len(t.hosts) + len(t.prefixes) }

// all yields every key, host keys first.
func (t *keyTable[K]) all() iter.Seq[K] {
	return func(yield func(K) bool) {
		for _, m := range []map[keyID]K{t.hosts, t.prefixes} {
			for k := range maps.Values(m) {
				if !yield(k) {
					return
				}
			}
		}
	}
}

// best returns the keys that the kernel would choose among for peer addr
// on a socket bound to VRF l3index (0: none): those whose prefix holds addr
// with the longest prefix, for any interface or for that VRF, in the order
// they were first set. covers reports whether there is one.
func (t *keyTable[K]) best(addr netip.Addr, l3index int) []K {
	return t.match(addr, l3index, keyID{})
}

// match is best without the key skip.
func (t *keyTable[K]) match(addr netip.Addr, l3index int, skip keyID) []K {
	ids := t.longest(addr, l3index, skip)
	if len(ids) == 0 {
		return nil
	}
	out := make([]K, 0, len(ids))
	for _, id := range ids {
		if applies(id, l3index, skip) {
			out = append(out, t.kind(id)[id])
		}
	}
	return out
}

// longest returns the IDs of the keys for the longest peer prefix that
// holds addr and has a key that applies on l3index other than skip; nil if
// there is none. Some of them may not apply: filter with applies.
func (t *keyTable[K]) longest(addr netip.Addr, l3index int, skip keyID) []keyID {
	if t.bits == nil {
		return nil
	}
	addr = addr.Unmap().WithZone("")
	f := family(addr)
	for bits := addr.BitLen(); bits >= 0; bits-- {
		if t.bits[f][bits] == 0 {
			continue
		}
		p, err := addr.Prefix(bits)
		if err != nil {
			continue
		}
		ids := t.peers[p]
		for _, id := range ids {
			if applies(id, l3index, skip) {
				return ids
			}
		}
	}
	return nil
}

// applies reports whether the key id is one the kernel uses on a socket
// bound to VRF l3index (0: none), other than skip: a key for any
// interface, or for that VRF.
func applies(id keyID, l3index int, skip keyID) bool {
	return id != skip && (id.ifindex == 0 || id.ifindex == l3index)
}

// covers reports whether a key covers peer addr reached through VRF
// l3index (0: none): a key for any interface, or one for that VRF.
func (t *keyTable[K]) covers(addr netip.Addr, l3index int) bool {
	return t.coversExcept(addr, l3index, keyID{})
}

// coversExcept is covers without the key skip: a key other than skip
// applies on l3index and its prefix holds addr, whatever its length.
func (t *keyTable[K]) coversExcept(addr netip.Addr, l3index int, skip keyID) bool {
	if t.len() > fewKeys {
		return t.longest(addr, l3index, skip) != nil
	}
	addr = addr.Unmap().WithZone("")
	for _, id := range t.few {
		if applies(id, l3index, skip) && id.peer.Contains(addr) {
			return true
		}
	}
	return false
}

// overlapping returns a key whose peers overlap p and whose interface
// may be ifindex's, if there is one: the kernel refuses an MD5 and an AO
// key for overlapping peers on one socket. A host p costs a walk over the
// prefix lengths; a range p, a walk over every key.
func (t *keyTable[K]) overlapping(p netip.Prefix, ifindex int) (K, bool) {
	var zero K
	if t.bits == nil {
		return zero, false
	}
	compatible := func(id keyID) bool { return id.ifindex == 0 || ifindex == 0 || id.ifindex == ifindex }
	f := family(p.Addr())
	for bits := p.Bits(); bits >= 0; bits-- {
		if t.bits[f][bits] == 0 {
			continue
		}
		q, _ := p.Addr().Prefix(bits)
		for _, id := range t.peers[q] {
			if compatible(id) {
				return t.kind(id)[id], true
			}
		}
	}
	if !p.IsSingleIP() {
		for _, m := range []map[keyID]K{t.hosts, t.prefixes} {
			for id, k := range m {
				if id.peer.Bits() > p.Bits() && p.Contains(id.peer.Addr()) && compatible(id) {
					return k, true
				}
			}
		}
	}
	return zero, false
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// name names the peers and interface of id, as errors do.
func (id keyID) name() string { return Key{Peer: id.peer, Ifindex: id.ifindex}.peerString() }

// confinedTo returns the VRF of an interface key that covers addr, if one
// does: a key a socket bound elsewhere does not use.
func (t *keyTable[K]) confinedTo(addr netip.Addr) (int, bool) {
	if t.bits == nil {
		return 0, false
	}
	addr = addr.Unmap().WithZone("")
	for bits := addr.BitLen(); bits >= 0; bits-- {
		if t.bits[family(addr)][bits] == 0 {
			continue
		}
		p, _ := addr.Prefix(bits)
		for _, id := range t.peers[p] {
			if id.ifindex != 0 {
				return id.ifindex, true
			}
		}
	}
	return 0, false
}

// keySet is the keys of both kinds one owner holds: a listener's, with
// their secrets; one socket's, without; a dialer's.
type keySet struct {
	md5 keyTable[Key]
	ao  keyTable[AOKey]
}

// covers reports whether a key of either kind covers peer addr reached
// through VRF l3index (0: none).
func (s *keySet) covers(addr netip.Addr, l3index int) bool {
	return s.md5.covers(addr, l3index) || s.ao.covers(addr, l3index)
}

// interfaces is how many keys of either kind have an Ifindex.
func (s *keySet) interfaces() int { return s.md5.interfaces + s.ao.interfaces }

// hosts is how many keys of either kind are for one host.
func (s *keySet) hosts() int { return len(s.md5.hosts) + len(s.ao.hosts) }

// prefixes is how many keys of either kind are for a range of peers.
func (s *keySet) prefixes() int { return len(s.md5.prefixes) + len(s.ao.prefixes) }

// len is how many keys of either kind there are.
func (s *keySet) len() int { return s.md5.len() + s.ao.len() }
