package tcpmd5

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeGroup is a group of n sockets that exist only as the keys recorded
// for them: what the group's placement reads.
func fakeGroup(n int) *group {
	g := &group{}
	for range n {
		g.shards = append(g.shards, &shard{})
	}
	return g
}

// TestGroupPlacement checks, without sockets, where the group puts keys: a
// host key on the one socket shardOf picks for its peer, a prefix key on
// every socket; that a socket is crowded only when it holds room host keys;
// and that an ENOMEM teaches the group the load of the socket that refused.
func TestGroupPlacement(t *testing.T) {
	t.Parallel()
	g := fakeGroup(5)
	for i := range 200 {
		peer := netip.MustParsePrefix("127.1." + strconv.Itoa(i/250) + "." + strconv.Itoa(i%250) + "/32")
		holders := g.holders(peer)
		require.Len(t, holders, 1, "a host key goes on one socket")
		assert.Same(t, g.shards[shardOf(peerHash(peer.Addr()), 5)], holders[0])
		holders[0].keys.md5.set(Key{Peer: peer})
	}
	assert.Len(t, g.holders(netip.MustParsePrefix("127.1.0.0/16")), 5, "a prefix key goes on every socket")

	var fullest *shard
	for _, s := range g.shards {
		if fullest == nil || s.keys.hosts() > fullest.keys.hosts() {
			fullest = s
		}
	}
	var peer netip.Addr
	for i := 0; ; i++ { // a peer whose SYNs reach the fullest socket
		peer = netip.AddrFrom4([4]byte{127, 2, byte(i >> 8), byte(i)})
		if g.shards[shardOf(peerHash(peer), 5)] == fullest {
			break
		}
	}
	id := Key{Peer: netip.PrefixFrom(peer, 32)}.id()
	assert.True(t, g.crowded(id, fullest.keys.hosts()), "its socket holds room host keys")
	assert.False(t, g.crowded(id, fullest.keys.hosts()+1))

	capacity := socketCapacity()
	assert.Equal(t, capacity, g.capacity(), "nothing refused yet: what option memory holds")
	g.learn(fullest)
	assert.Equal(t, min(fullest.keys.len(), capacity), g.capacity(), "a refusal teaches the socket's real room")
	fuller := &shard{}
	for i := range fullest.keys.len() + 10 {
		fuller.keys.md5.set(Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 3, 0, byte(i)}), 32)})
	}
	g.learn(fuller)
	g.learn(&shard{})
	assert.Equal(t, min(fullest.keys.len(), capacity), g.capacity(),
		"neither a fuller socket's refusal nor an empty one's, which would refuse every key for good, moves it")
	emptier := &shard{}
	emptier.keys.md5.set(Key{Peer: netip.MustParsePrefix("127.3.1.1/32")})
	g.learn(emptier)
	assert.Equal(t, 1, g.capacity(), "an emptier socket's refusal lowers it")

	g = fakeGroup(1)
	soft := min(keysPerSocket(), g.capacity())
	assert.Equal(t, soft-3, g.hostRoom(3), "prefix keys take room from host keys")
	assert.Equal(t, g.capacity()-soft, g.hostRoom(soft), "beyond the soft cap, what option memory holds")
}
