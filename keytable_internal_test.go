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
