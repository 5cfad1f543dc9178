package e2e_test

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// TestSetKeysOnEstablished shows what SetKeys does to a connection that is
// already up, on the wire between two namespaces: keys installed at both
// ends while the connection is idle sign and verify every segment from then
// on; a key at one end only stalls the connection, each side dropping the
// other's segments, until the other end holds the same key; and both ends
// changing the secret together rekey it.
func TestSetKeysOnEstablished(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	setBoth := func(t *testing.T, client, server net.Conn, clientSecret, serverSecret string) {
		t.Helper()
		if clientSecret != "" {
			require.NoError(t, tcpmd5.SetKeys(client.(*net.TCPConn), testkit.HostKey(client.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), clientSecret)))
		}
		if serverSecret != "" {
			require.NoError(t, tcpmd5.SetKeys(server.(*net.TCPConn), testkit.HostKey(server.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(), serverSecret)))
		}
	}
	tests := []struct {
		name           string
		signed         bool   // the handshake was signed with testkit.SecretA
		client, server string // the secrets SetKeys installs; "" for none
		works          bool
		counter        string // the drop counter that moves when it stalls, at the server
	}{
		{name: "unsigned, both ends keyed", client: testkit.SecretA, server: testkit.SecretA, works: true},
		{name: "unsigned, server keyed", server: testkit.SecretA, counter: netstat.MD5NotFound},
		{name: "unsigned, client keyed", client: testkit.SecretA, counter: netstat.MD5Unexpected},
		{name: "signed, both ends rekeyed", signed: true, client: testkit.SecretB, server: testkit.SecretB, works: true},
		{name: "signed, server rekeyed", signed: true, server: testkit.SecretB, counter: netstat.MD5Failure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, s := testnet.Pair(t)
			lc := &tcpmd5.ListenConfig{AllowUnsigned: true}
			d := netDialer()
			if tt.signed {
				lc.Keys = []tcpmd5.Key{{Peer: netip.PrefixFrom(c.Addr4, 32), Secret: []byte(testkit.SecretA)}}
				d = netDialer(tcpmd5.Key{Peer: netip.PrefixFrom(s.Addr4, 32), Secret: []byte(testkit.SecretA)})
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
