package tcpmd5

import (
	"iter"
	"maps"
	"net/netip"
)

// keyTable holds keys by what identifies them to the kernel, host keys (/32,
// /128) apart from prefix keys, the way a listener's group places them: a
// host key on the one socket that its peer's SYNs reach, a prefix key on
// every socket. It answers, in time independent of the number of keys,
// which keys the kernel would choose among for a peer.
type keyTable struct {
	hosts, prefixes map[keyID]Key
	peers           map[netip.Prefix]int // keys per peer prefix, over interfaces
	bits            [2][129]int          // peer prefixes per length: [0] IPv4, [1] IPv6
	interfaces      int                  // keys with an Ifindex
}

// kind returns the map that holds keys like the one id names.
func (t *keyTable) kind(id keyID) map[keyID]Key {
	if id.peer.IsSingleIP() {
		return t.hosts
	}
	return t.prefixes
}

func (t *keyTable) set(k Key) {
	if t.hosts == nil {
		t.hosts, t.prefixes = make(map[keyID]Key), make(map[keyID]Key)
		t.peers = make(map[netip.Prefix]int)
	}
	id := k.id()
	m := t.kind(id)
	if _, ok := m[id]; !ok {
		if t.peers[k.Peer] == 0 {
			t.bits[family(k.Peer.Addr())][k.Peer.Bits()]++
		}
		t.peers[k.Peer]++
		if k.Ifindex != 0 {
			t.interfaces++
		}
	}
	m[id] = k
}

func (t *keyTable) remove(id keyID) {
	m := t.kind(id)
	if _, ok := m[id]; !ok {
		return
	}
	delete(m, id)
	if id.ifindex != 0 {
		t.interfaces--
	}
	if t.peers[id.peer]--; t.peers[id.peer] == 0 {
		delete(t.peers, id.peer)
		t.bits[family(id.peer.Addr())][id.peer.Bits()]--
	}
}

func (t *keyTable) get(id keyID) (Key, bool) {
	k, ok := t.kind(id)[id]
	return k, ok
}

func (t *keyTable) len() int { return len(t.hosts) + len(t.prefixes) }

// all yields every key, host keys first.
func (t *keyTable) all() iter.Seq[Key] {
	return func(yield func(Key) bool) {
		for _, m := range []map[keyID]Key{t.hosts, t.prefixes} {
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
// with the longest prefix, for any interface or for that VRF. covers
// reports whether there is one.
func (t *keyTable) best(addr netip.Addr, l3index int) []Key {
	addr = addr.Unmap().WithZone("")
	f := family(addr)
	for bits := addr.BitLen(); bits >= 0; bits-- {
		if t.bits[f][bits] == 0 {
			continue
		}
		p, err := addr.Prefix(bits)
		if err != nil || t.peers[p] == 0 {
			continue
		}
		var out []Key
		if k, ok := t.get(keyID{p, 0}); ok {
			out = append(out, k)
		}
		if k, ok := t.get(keyID{p, l3index}); ok && l3index != 0 {
			out = append(out, k)
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// covers reports whether a key covers peer addr reached through VRF
// l3index (0: none): a key for any interface, or one for that VRF.
func (t *keyTable) covers(addr netip.Addr, l3index int) bool {
	return len(t.best(addr, l3index)) > 0
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}
