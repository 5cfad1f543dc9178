package tcpmd5

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestKeyChainHoldsNoClosedConnection, in a network namespace of its own: a
// chain on a listener and a dialer sees 5,000 connections opened, used
// and closed, one after another; the connections it keeps never number
// more than a few hundred, and once Sessions has looked, none.
func TestKeyChainHoldsNoClosedConnection(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	const conns = 5000
	chain := NewKeyChain()
	require.NoError(t, chain.SetKey(Key{Peer: netip.MustParsePrefix("127.0.0.0/8"), Secret: fakeA}, time.Time{}))
	ln, err := (&ListenConfig{KeyChain: chain}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	most := 0
	buf := make([]byte, 4)
	for i := range conns {
		d := Dialer{KeyChain: chain}
		d.Timeout = 30 * time.Second
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, byte(2+i/60000), byte(i/250%240), byte(1+i%250))}
		c, err := d.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err, "connection %d", i)
		_, err = c.Write([]byte("Ping"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		c.Close()
		chain.mu.Lock()
		most = max(most, len(chain.sessions))
		chain.mu.Unlock()
	}
	assert.Less(t, most, 1000, "the chain kept %d connections at once, while at most a few were open", most)
	require.Eventually(t, func() bool {
		_ = chain.Sessions()
		chain.mu.Lock()
		defer chain.mu.Unlock()
		return len(chain.sessions) == 0
	}, 30*time.Second, 20*time.Millisecond, "closed connections stay in the chain")
	t.Logf("%d connections: the chain kept at most %d at once, and none at the end", conns, most)
}
