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
}

// TestHostRoom: a socket takes hostsPerSocket host keys, and prefix keys,
// which go on every socket, come on top of them as far as option memory
// holds them; more prefix keys never leave more room. So a set of host keys
// beside prefix keys takes the sockets it takes alone, where prefix keys
// used to take host keys' room down to one key a socket (and a listener
// made 4,096 sockets for 1,000 host keys beside 127 prefix keys).
func TestHostRoom(t *testing.T) {
	t.Parallel()
	capacity := socketCapacity()
	require.Greater(t, capacity, hostsPerSocket+10, "this test needs option memory for more than %d keys a socket", hostsPerSocket+10)
	assert.Equal(t, hostsPerSocket, hostRoom(capacity, 0))
	assert.Equal(t, hostsPerSocket, hostRoom(capacity, 3), "prefix keys come on top")
	assert.Equal(t, hostsPerSocket, hostRoom(capacity, capacity-hostsPerSocket))
	assert.Equal(t, 10, hostRoom(capacity, capacity-10), "beside many prefix keys, what option memory holds")
	assert.Equal(t, 0, hostRoom(capacity, capacity))
	for prefixes := 1; prefixes <= capacity; prefixes++ {
		require.LessOrEqual(t, hostRoom(capacity, prefixes), hostRoom(capacity, prefixes-1), "%d prefix keys", prefixes)
	}

	alone := shardsFor(keySetOf(t, 0, 2000))
	require.Greater(t, alone, 1)
	for _, prefixes := range []int{1, 64, 127, 128, capacity - hostsPerSocket} {
		if prefixes > capacity-hostsPerSocket {
			continue // option memory is short of them (6.1 holds 150 keys)
		}
		assert.Equal(t, alone, shardsFor(keySetOf(t, prefixes, 2000)), "beside %d prefix keys", prefixes)
	}
}

// TestShardsForFewest: shardsFor, which halves its search, finds the
// fewest shards whose fullest holds no more host keys than hostRoom, as
// trying every count from one up does.
func TestShardsForFewest(t *testing.T) {
	t.Parallel()
	room := hostRoom(socketCapacity(), 0)
	for _, hosts := range []int{1, 64, 65, 500, 2000, 9000} {
		keys := keySetOf(t, 0, hosts)
		fits := func(n int) bool {
			loads := make([]int, n)
			for id := range keys.md5.hosts {
				s := shardOf(peerHash(id.peer.Addr()), n)
				if loads[s]++; loads[s] > room {
					return false
				}
			}
			return true
		}
		fewest := 1
		for !fits(fewest) {
			fewest++
		}
		assert.Equal(t, fewest, shardsFor(keys), "%d host keys", hosts)
	}
}

// keySetOf returns a key set of prefixes prefix keys and hosts host keys.
func keySetOf(t *testing.T, prefixes, hosts int) *keySet {
	t.Helper()
	var s keySet
	for i := range prefixes {
		s.md5.set(Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)})
	}
	for i := range hosts {
		s.md5.set(Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 32)})
	}
	require.Equal(t, prefixes+hosts, s.md5.len())
	return &s
}
