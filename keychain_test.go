package tcpmd5

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chainAOKey is an AO key of these tests, for peer.
func chainAOKey(t *testing.T, peer string, send, recv uint8, secret string) AOKey {
	t.Helper()
	k, err := AOKey{Peer: netip.MustParsePrefix(peer), SendID: send, RecvID: recv, Algorithm: "hmac(sha1)", Secret: []byte(secret)}.normalize()
	require.NoError(t, err)
	return k
}

// TestChainSchedule: without sockets, the chain's state at each moment:
// the MD5 key of the latest start not in the future signs; an AO key is on
// while either lifetime is open; the preferred one is the open send
// lifetime that began last; the next boundary is the first after now; the
// dialer's table puts the preferred key first.
func TestChainSchedule(t *testing.T) {
	c := NewKeyChain()
	t0 := time.Now().Add(time.Hour) // boundaries the timer will not reach during the test
	md5 := func(secret string) Key {
		return Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte(secret)}
	}
	require.NoError(t, c.SetKey(md5("fake-secret-old"), time.Time{}))
	require.NoError(t, c.SetKey(md5("fake-secret-new"), t0))
	old := chainAOKey(t, "198.51.100.0/24", 1, 1, "fake-secret-ao-old")
	next := chainAOKey(t, "198.51.100.0/24", 2, 2, "fake-secret-ao-new")
	require.NoError(t, c.SetAOKey(old, Lifetime{Until: t0.Add(time.Minute)}, Lifetime{Until: t0.Add(2 * time.Minute)}))
	require.NoError(t, c.SetAOKey(next, Lifetime{From: t0}, Lifetime{From: t0.Add(-time.Minute)}))

	signs := func(at time.Time) string {
		c.mu.Lock()
		defer c.mu.Unlock()
		ks := c.stateLocked(at).md5.best(netip.MustParseAddr("192.0.2.1"), 0)
		require.Len(t, ks, 1)
		return string(ks[0].Secret)
	}
	assert.Equal(t, "fake-secret-old", signs(t0.Add(-time.Second)))
	assert.Equal(t, "fake-secret-new", signs(t0))

	c.mu.Lock()
	for _, tc := range []struct {
		at            time.Duration
		oldOn, nextOn bool
		preferred     uint8 // 0: none
	}{
		{-2 * time.Minute, true, false, 1},
		{-time.Minute, true, true, 1},
		{0, true, true, 2},
		{90 * time.Second, true, true, 2},
		{3 * time.Minute, false, true, 2},
	} {
		at := t0.Add(tc.at)
		assert.Equal(t, tc.oldOn, c.aoOn(old, at), "old at %v", tc.at)
		assert.Equal(t, tc.nextOn, c.aoOn(next, at), "next at %v", tc.at)
		p, ok := c.preferred([]AOKey{old, next}, at)
		require.True(t, ok)
		assert.Equal(t, tc.preferred, p.SendID, "preferred at %v", tc.at)
	}
	assert.Equal(t, t0.Add(-time.Minute), c.nextBoundary(t0.Add(-time.Hour)))
	assert.Equal(t, t0, c.nextBoundary(t0.Add(-time.Minute)))
	assert.Equal(t, t0.Add(time.Minute), c.nextBoundary(t0))
	assert.True(t, c.nextBoundary(t0.Add(time.Hour)).IsZero())
	assert.Equal(t, t0.Add(-time.Minute), c.next, "the timer waits for the first boundary")
	c.mu.Unlock()

	// Now (before t0) the old AO key is the only one on and signs.
	dt := c.dialTable()
	ks := dt.keys.ao.best(netip.MustParseAddr("198.51.100.7"), 0)
	require.Len(t, ks, 1)
	assert.Equal(t, uint8(1), ks[0].SendID)
	assert.Same(t, dt, c.dialTable(), "the table is built once per change")

	require.NoError(t, c.RemoveAOKey(old))
	assert.NotContains(t, c.ao, old.id())
	assert.Empty(t, c.dialTable().keys.ao.best(netip.MustParseAddr("198.51.100.7"), 0), "the new key is not on before its accept lifetime")
	require.NoError(t, c.RemoveKey(md5(""), t0))
	assert.Equal(t, "fake-secret-old", signs(t0.Add(time.Hour)), "the earlier key signs again")
}

// TestChainRefusesHalfKeyIDs: a key sharing only its SendID, or only its
// RecvID, with another key for the same peer is refused, as the kernel
// refuses it (EEXIST); secrets never appear in the error.
func TestChainRefusesHalfKeyIDs(t *testing.T) {
	c := NewKeyChain()
	require.NoError(t, c.SetAOKey(chainAOKey(t, "192.0.2.0/24", 1, 2, "fake-secret-one"), Lifetime{}, Lifetime{}))
	err := c.SetAOKey(chainAOKey(t, "192.0.2.0/24", 1, 3, "fake-secret-two"), Lifetime{}, Lifetime{})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "fake-secret")
	later := Lifetime{From: time.Unix(2e9, 0)}
	require.NoError(t, c.SetAOKey(chainAOKey(t, "192.0.2.0/24", 1, 2, "fake-secret-one"), later, Lifetime{}), "the same key takes new lifetimes")
	assert.Equal(t, later, c.ao[chainAOKey(t, "192.0.2.0/24", 1, 2, "fake-secret-one").id()].send)
	assert.Len(t, c.ao, 1)
}

// TestChainRefusesNewSecretUnderOldKeyIDs: a live connection cannot take
// another secret, algorithm or MAC length under KeyIDs it holds, so the
// chain refuses such a replacement, changing nothing, and says to use new
// KeyIDs; the secret is not in the error.
func TestChainRefusesNewSecretUnderOldKeyIDs(t *testing.T) {
	c := NewKeyChain()
	k := chainAOKey(t, "192.0.2.0/24", 1, 2, "fake-secret-one")
	require.NoError(t, c.SetAOKey(k, Lifetime{}, Lifetime{}))
	other := func(change func(*AOKey)) AOKey { o := k; o.Secret = slices.Clone(k.Secret); change(&o); return o }
	for name, o := range map[string]AOKey{
		"secret":    other(func(o *AOKey) { o.Secret = []byte("fake-secret-two") }),
		"algorithm": other(func(o *AOKey) { o.Algorithm = "hmac(sha256)" }),
		"MAC":       other(func(o *AOKey) { o.MACLen = 16 }),
	} {
		err := c.SetAOKey(o, Lifetime{From: time.Unix(2e9, 0)}, Lifetime{})
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "new KeyIDs", name)
		assert.NotContains(t, err.Error(), "fake-secret", name)
		assert.Equal(t, Lifetime{}, c.ao[k.id()].send, "%s: the refused call changed the lifetimes", name)
		assert.Equal(t, k.Secret, c.ao[k.id()].key.Secret, name)
	}
}
