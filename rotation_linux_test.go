package tcpmd5_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// TestListenerKeyRotation changes a live listener's keys while sessions are
// up: the established sessions keep working with the key of their
// handshake, and every new handshake uses the keys installed at its time.
func TestListenerKeyRotation(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.4.1.0/24", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()
	withA, withB := key(t, "127.0.0.1", secretA), key(t, "127.0.0.1", secretB)

	dialUp := func(src string, k tcpmd5.Key) net.Conn {
		t.Helper()
		c, err := dialer(src, k).Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		ping(t, c)
		return c
	}
	refused := func(src string, k tcpmd5.Key, counter string) {
		t.Helper()
		dropDial(t, dialer(src, k), "tcp", addr, counter)
	}

	oldA := dialUp("127.4.1.1", withA)

	// A new secret for the whole range: the old session goes on, new
	// handshakes need the new secret.
	require.NoError(t, ln.SetKey(key(t, "127.4.1.0/24", secretB)))
	ping(t, oldA)
	refused("127.4.1.2", withA, netstat.MD5Failure)
	newB := dialUp("127.4.1.2", withB)

	// A more specific key wins for its host only.
	require.NoError(t, ln.SetKey(key(t, "127.4.1.3", secretA)))
	dialUp("127.4.1.3", withA)
	refused("127.4.1.3", withB, netstat.MD5Failure)
	dialUp("127.4.1.4", withB)

	// Removing the range: its sessions go on; its peers can no longer
	// connect, signed (the kernel drops the SYN) or unsigned (Accept resets
	// the connection and counts it).
	require.NoError(t, ln.RemoveKey(tcpmd5.Key{Peer: netip.MustParsePrefix("127.4.1.0/24")}))
	assert.Equal(t, []tcpmd5.Key{key(t, "127.4.1.3", secretA)}, ln.Keys())
	ping(t, oldA)
	ping(t, newB)
	refused("127.4.1.5", withB, netstat.MD5Unexpected)
	refusedBefore := ln.RefusedUnsigned()
	// The kernel completes the unsigned handshake; Accept then resets the
	// connection, which the dialer sees at connect or at its first read.
	c, err := dialer("127.4.1.5").Dial("tcp", addr)
	if err == nil {
		defer c.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
		require.Error(t, err, "the listener handed over a connection no key covers")
	}
	var ne net.Error
	assert.False(t, errors.As(err, &ne) && ne.Timeout(), "want a reset or EOF, got %v", err)
	assert.Equal(t, refusedBefore+1, ln.RefusedUnsigned())
	ping(t, oldA)
}

// TestSetKeysOnEstablished shows what SetKeys does to a connection that is
// already up, on the wire between two namespaces: keys installed at both
// ends while the connection is idle sign and verify every segment from then
// on; a key at one end only stalls the connection, each side dropping the
// other's segments, until the other end holds the same key; and both ends
// changing the secret together rekey it.
func TestSetKeysOnEstablished(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	setBoth := func(t *testing.T, client, server net.Conn, clientSecret, serverSecret string) {
		t.Helper()
		if clientSecret != "" {
			require.NoError(t, tcpmd5.SetKeys(client.(*net.TCPConn), hostKey(client.RemoteAddr(), clientSecret)))
		}
		if serverSecret != "" {
			require.NoError(t, tcpmd5.SetKeys(server.(*net.TCPConn), hostKey(server.RemoteAddr(), serverSecret)))
		}
	}
	tests := []struct {
		name           string
		signed         bool   // the handshake was signed with secretA
		client, server string // the secrets SetKeys installs; "" for none
		works          bool
		counter        string // the drop counter that moves when it stalls, at the server
	}{
		{name: "unsigned, both ends keyed", client: secretA, server: secretA, works: true},
		{name: "unsigned, server keyed", server: secretA, counter: netstat.MD5NotFound},
		{name: "unsigned, client keyed", client: secretA, counter: netstat.MD5Unexpected},
		{name: "signed, both ends rekeyed", signed: true, client: secretB, server: secretB, works: true},
		{name: "signed, server rekeyed", signed: true, server: secretB, counter: netstat.MD5Failure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, s := testnet.Pair(t)
			lc := &tcpmd5.ListenConfig{AllowUnsigned: true}
			d := netDialer()
			if tt.signed {
				lc.Keys = []tcpmd5.Key{{Peer: netip.PrefixFrom(c.Addr4, 32), Secret: []byte(secretA)}}
				d = netDialer(tcpmd5.Key{Peer: netip.PrefixFrom(s.Addr4, 32), Secret: []byte(secretA)})
			}
			ln := listenIn(t, s.Host, lc, "tcp4", net.JoinHostPort(s.Addr4.String(), "0"))
			capture := c.Capture(t)
			client, server := connPair(t, c.Host, d, ln)
			exchange(t, client, server, "fake-before")
			clientAP, serverAP := client.LocalAddr().(*net.TCPAddr).AddrPort(), client.RemoteAddr().(*net.TCPAddr).AddrPort()
			seen := len(capture.WaitFor(t, clientAP, serverAP, 5*time.Second, "the first exchange", func(segs []testnet.Segment) bool {
				return settled(segs, clientAP, serverAP)
			}))

			before := countersIn(t, s.Host)
			setBoth(t, client, server, tt.client, tt.server)
			if tt.works {
				exchange(t, client, server, "fake-after")
				after := capture.WaitFor(t, clientAP, serverAP, 5*time.Second, "the second exchange", func(segs []testnet.Segment) bool {
					return settled(segs[seen:], clientAP, serverAP)
				})[seen:]
				for _, seg := range after {
					assert.True(t, seg.MD5(), "a segment after SetKeys is not signed: %v", seg)
				}
				moved := before.Delta(countersIn(t, s.Host), netstat.MD5Counters...)
				for _, n := range netstat.MD5Counters {
					assert.Zero(t, moved[n], "%s moved", n)
				}
				return
			}
			require.NoError(t, client.SetDeadline(time.Now().Add(5*time.Second)))
			_, err := client.Write([]byte("fake-after"))
			require.NoError(t, err, "the write goes to the socket buffer")
			waitCounter(t, s.Host, before, tt.counter, 5*time.Second)
			require.NoError(t, server.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
			n, err := server.Read(make([]byte, 16))
			var ne net.Error
			require.ErrorAs(t, err, &ne, "the server read %d bytes through a one-sided key", n)
			assert.True(t, ne.Timeout())

			// Once the other end holds the same key, the retransmission gets through.
			if tt.server == "" {
				setBoth(t, client, server, "", tt.client)
			} else {
				setBoth(t, client, server, tt.server, "")
			}
			require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
			got := make([]byte, len("fake-after"))
			_, err = io.ReadFull(server, got)
			require.NoError(t, err, "the connection did not recover once both ends held the same key")
			assert.Equal(t, "fake-after", string(got))
			exchange(t, client, server, "fake-recovered")
		})
	}
}

// hostKey returns the key for the one host at a with secret.
func hostKey(a net.Addr, secret string) tcpmd5.Key {
	ip := a.(*net.TCPAddr).AddrPort().Addr().Unmap()
	return tcpmd5.Key{Peer: netip.PrefixFrom(ip, ip.BitLen()), Secret: []byte(secret)}
}
