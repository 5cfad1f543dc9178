package tcpmd5

import (
	"net/netip"
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
// with keys of both kinds (an error) and a host under a prefix key; a table
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
	tb := newDialTable(
		[]Key{md5("198.51.100.1/32"), md5("198.51.100.3/32"), md5("203.0.113.0/24"), md5("2001:db8::1/128")},
		[]AOKey{ao("198.51.100.2/32"), ao("198.51.100.3/32"), ao("203.0.113.9/32")})
	assert.Equal(t, 7, tb.keys.len())
	assert.Zero(t, tb.keys.interfaces())
	assert.Len(t, tb.hosts, 5)
	for _, a := range []string{"198.51.100.1", "198.51.100.2", "198.51.100.3", "203.0.113.9", "2001:db8::1", "203.0.113.7", "192.0.2.1"} {
		addr := netip.MustParseAddr(a)
		walked := planOf(&tb.keys, addr, 0)
		got := tb.plan(addr, 0)
		assert.Equal(t, walked, got, a)
		_, indexed := tb.hosts[addr]
		assert.Equal(t, a != "203.0.113.7" && a != "192.0.2.1", indexed, a)
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
	assert.Equal(t, []Key{md5("198.51.100.1/32"), vrf}, tb.plan(netip.MustParseAddr("198.51.100.1"), 7).md5)
	assert.Equal(t, []Key{md5("198.51.100.1/32")}, tb.plan(netip.MustParseAddr("198.51.100.1"), 0).md5)
}
