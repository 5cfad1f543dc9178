package tcpmd5

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestKeyTableBestKeepsOrder: the keys of one prefix come out of best in
// the order they were first set, a replaced key keeping its place and a
// removed one leaving the others in order: the Dialer's first AO key
// relies on it.
func TestKeyTableBestKeepsOrder(t *testing.T) {
	peer := netip.MustParsePrefix("192.0.2.0/24")
	key := func(send uint8, secret string) AOKey {
		return AOKey{Peer: peer, SendID: send, RecvID: send, Secret: []byte(secret)}
	}
	var tb keyTable[AOKey]
	for _, send := range []uint8{5, 1, 9, 3} {
		tb.set(key(send, "fake-a"))
	}
	tb.set(key(1, "fake-b")) // replaced in place
	tb.remove(key(9, "").id())
	var order []uint8
	for _, k := range tb.best(netip.MustParseAddr("192.0.2.7"), 0) {
		order = append(order, k.SendID)
	}
	assert.Equal(t, []uint8{5, 1, 3}, order)
	k, _ := tb.get(key(1, "").id())
	assert.Equal(t, "fake-b", string(k.Secret))
	assert.Empty(t, tb.best(netip.MustParseAddr("198.51.100.1"), 0))
}

// TestDialTablePlan: the plan a dial reads from the index of host keys is
// the one the walk over prefixes gives, for an MD5 host, an AO host, a host
// with keys of both kinds (an error) and a host under a prefix key, whether
// the index is a few plans (at most fewKeys addresses) or a map; a table
// with an interface key keeps no index, since its plans depend on the
// socket's VRF; a covered address without a host key and an uncovered one
// come from the walk.
func TestDialTablePlan(t *testing.T) {
	md5 := func(peer string) Key {
		return Key{Peer: netip.MustParsePrefix(peer), Secret: []byte("fake-md5")}
	}
	ao := func(peer string) AOKey {
		return AOKey{Peer: netip.MustParsePrefix(peer), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", Secret: []byte("fake-ao")}
	}
	keys := []Key{md5("198.51.100.1/32"), md5("198.51.100.3/32"), md5("203.0.113.0/24"), md5("2001:db8::1/128")}
	aoKeys := []AOKey{ao("198.51.100.2/32"), ao("198.51.100.3/32"), ao("203.0.113.9/32")}
	var more []Key
	for i := range fewKeys {
		more = append(more, md5(netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i)}).String()+"/32"))
	}
	indexed := func(tb *dialTable, addr netip.Addr) bool {
		_, ok := tb.hosts[addr]
		for _, h := range tb.few {
			ok = ok || h.addr == addr
		}
		return ok
	}
	for _, tc := range []struct {
		name  string
		keys  []Key
		hosts int
		few   bool
	}{
		{"few", keys, 5, true},
		{"many", append(slices.Clone(keys), more...), 5 + fewKeys, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := newDialTable(tc.keys, aoKeys)
			assert.Equal(t, len(tc.keys)+3, tb.keys.len())
			assert.Zero(t, tb.keys.interfaces())
			if tc.few {
				assert.Nil(t, tb.hosts)
				assert.Len(t, tb.few, tc.hosts)
			} else {
				assert.Len(t, tb.hosts, tc.hosts)
				assert.Nil(t, tb.few)
			}
			for _, a := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "203.0.113.9", "2001:db8::1", "203.0.113.7", "192.0.2.1"} {
				addr := netip.MustParseAddr(a)
				walked := planOf(&tb.keys, addr, 0)
				got := tb.plan(addr, 0)
				assert.Equal(t, walked, got, a)
				assert.Equal(t, a != "203.0.113.7" && a != "192.0.2.1", indexed(tb, addr), a)
			}
			assert.Equal(t, []Key{md5("198.51.100.1/32")}, tb.plan(netip.MustParseAddr("198.51.100.1"), 0).md5)
			assert.Equal(t, []AOKey{ao("198.51.100.2/32")}, tb.plan(netip.MustParseAddr("198.51.100.2"), 0).ao)
			assert.ErrorContains(t, tb.plan(netip.MustParseAddr("198.51.100.3"), 0).err, "a peer is MD5 or AO, not both")
			assert.Equal(t, []AOKey{ao("203.0.113.9/32")}, tb.plan(netip.MustParseAddr("203.0.113.9"), 0).ao, "the AO host key's longer prefix decides")
			assert.Equal(t, []Key{md5("203.0.113.0/24")}, tb.plan(netip.MustParseAddr("203.0.113.7"), 0).md5)
			assert.Equal(t, dialPlan{}, tb.plan(netip.MustParseAddr("192.0.2.1"), 0))
			zoned := netip.MustParseAddr("2001:db8::1").WithZone("eth0")
			assert.Equal(t, []Key{md5("2001:db8::1/128")}, tb.plan(zoned, 0).md5, "the zone does not hide the host key")

			vrf := md5("198.51.100.1/32")
			vrf.Ifindex = 7
			tb.keys.md5.set(vrf)
			tb.index()
			assert.Equal(t, 1, tb.keys.interfaces())
			assert.Nil(t, tb.hosts)
			assert.Nil(t, tb.few)
			assert.Equal(t, []Key{md5("198.51.100.1/32"), vrf}, tb.plan(netip.MustParseAddr("198.51.100.1"), 7).md5)
			assert.Equal(t, []Key{md5("198.51.100.1/32")}, tb.plan(netip.MustParseAddr("198.51.100.1"), 0).md5)
		})
	}
}

// TestKeyTableCoversFew: while a table holds at most fewKeys keys, covers
// walks their IDs instead of the prefix lengths; across random sets and
// removes that take a table over fewKeys and back, both answer alike for
// every address, interface and skipped key, and few holds exactly the
// table's IDs when in use.
func TestKeyTableCoversFew(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	peers := []string{"10.0.0.1/32", "10.0.0.2/32", "10.0.0.0/24", "10.0.0.0/8", "0.0.0.0/0",
		"2001:db8::1/128", "2001:db8::/64", "::/0", "10.0.0.128/25", "10.0.1.1/32"}
	addrs := []string{"10.0.0.1", "10.0.0.2", "10.0.0.200", "10.9.9.9", "192.0.2.1", "::ffff:10.0.0.1",
		"2001:db8::1", "2001:db8::2", "2001:db8:1::1", "fe80::1%eth0", "10.0.1.1"}
	key := func() Key {
		return Key{Peer: netip.MustParsePrefix(peers[rng.IntN(len(peers))]), Ifindex: rng.IntN(3), Secret: []byte("fake")}
	}
	var tb keyTable[Key]
	wasMany, back := false, false
	for step := range 4000 {
		growing := step/500%2 == 0 // phases that take the table over fewKeys, then back
		if (rng.IntN(4) > 0) == growing || tb.len() == 0 {
			tb.set(key())
		} else {
			tb.remove(key().id())
		}
		if tb.len() <= fewKeys {
			back = back || wasMany
			var ids []keyID
			for k := range tb.all() {
				ids = append(ids, k.id())
			}
			assert.ElementsMatch(t, ids, tb.few, "step %d", step)
		} else {
			wasMany = true
			assert.Nil(t, tb.few, "step %d", step)
		}
		for _, a := range addrs {
			addr := netip.MustParseAddr(a)
			for l3index := range 3 {
				skip := key().id()
				for _, sk := range []keyID{{}, skip} {
					walked := tb.longest(addr, l3index, sk) != nil
					if !assert.Equal(t, walked, tb.coversExcept(addr, l3index, sk), "step %d: %s on %d without %v", step, a, l3index, sk) {
						return
					}
				}
			}
		}
	}
	assert.True(t, back, "the table went over fewKeys and back")
}

// TestDialled: the address a dial's Control hook is told, as the key
// lookup takes it: IPv4, IPv6 in brackets, v4-mapped (unmapped), with a
// zone; what is not an IP literal is an error that names it.
func TestDialled(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:179":             "192.0.2.1",
		"[2001:db8::1]:179":         "2001:db8::1",
		"[::ffff:192.0.2.1]:179":    "192.0.2.1",
		"[fe80::1%eth0]:179":        "fe80::1%eth0",
		"[2001:db8::1%vrf-red]:179": "2001:db8::1%vrf-red",
	} {
		got, err := dialled(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, netip.MustParseAddr(want), got, in)
		}
	}
	for _, in := range []string{"peer.example:179", "[2001:db8::1:179", "2001:db8::1:179", ":179", ""} {
		_, err := dialled(in)
		assert.ErrorContains(t, err, "dialling "+strconv.Quote(in), in)
	}
}
