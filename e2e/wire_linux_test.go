package e2e_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// TestEverySegmentIsSigned captures a whole connection, SYN to the last ACK
// after both FINs, on the wire between two namespaces and requires the
// RFC 2385 option (kind 19, length 18) on every segment in both directions.
// The same capture of an unsigned connection finds no such option, which
// shows the check can fail.
func TestEverySegmentIsSigned(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	for _, family := range []string{"IPv4", "IPv6"} {
		for _, signed := range []bool{true, false} {
			name := family + "/signed"
			if !signed {
				name = family + "/unsigned control"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				if family == "IPv6" {
					testkit.RequireIPv6(t)
				}
				client, server := testnet.Pair(t)
				caddr, saddr := client.Addr4, server.Addr4
				if family == "IPv6" {
					caddr, saddr = client.Addr6, server.Addr6
				}
				lc := &tcpmd5.ListenConfig{AllowUnsigned: !signed}
				var d *tcpmd5.Dialer
				if signed {
					lc.Keys = []tcpmd5.Key{{Peer: netip.PrefixFrom(caddr, caddr.BitLen()), Secret: []byte(testkit.SecretA)}}
					d = netDialer(tcpmd5.Key{Peer: netip.PrefixFrom(saddr, saddr.BitLen()), Secret: []byte(testkit.SecretA)})
				} else {
					d = netDialer()
				}
				ln := listenIn(t, server.Host, lc, "tcp", net.JoinHostPort(saddr.String(), "0"))
				testkit.ServeEcho(t, ln)
				capture := client.Capture(t)

				c, err := dialIn(client.Host, d, "tcp", ln.Addr().String())
				require.NoError(t, err)
				local := c.LocalAddr().(*net.TCPAddr).AddrPort()
				remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
				for range 3 {
					testkit.Ping(t, c)
				}
				require.NoError(t, c.Close())

				segs := wholeConnection(t, capture, local, remote)

				seen := map[string]bool{}
				for _, s := range segs {
					dir := "client"
					if s.Src == remote {
						dir = "server"
					}
					switch {
					case s.Flags&testnet.SYN != 0:
						seen[dir+" SYN"] = true
					case s.Flags&testnet.FIN != 0:
						seen[dir+" FIN"] = true
					case len(s.Payload) > 0:
						seen[dir+" data"] = true
					default:
						seen[dir+" ACK"] = true
					}
					assert.Equal(t, signed, s.MD5(), "segment %v", s)
					assert.Zero(t, s.Flags&testnet.RST, "a reset in a clean connection: %v", s)
				}
				for _, want := range []string{"client SYN", "server SYN", "client data", "server data", "client FIN", "server FIN", "client ACK"} {
					assert.True(t, seen[want], "no %s in the capture: %v", want, segs)
				}
				t.Logf("%d segments captured", len(segs))
			})
		}
	}
}

// wholeConnection waits until capture holds the closing handshake of the
// connection from local to remote, which local closed first, and returns
// its segments: the server answers our FIN with its own, and our ACK of it
// is the last segment.
func wholeConnection(t *testing.T, capture *testnet.Capture, local, remote netip.AddrPort) []testnet.Segment {
	t.Helper()
	return capture.WaitFor(t, local, remote, testkit.MustConnect, "the closing handshake", func(segs []testnet.Segment) bool {
		var serverFIN *testnet.Segment
		for i, s := range segs {
			if s.Src == remote && s.Flags&testnet.FIN != 0 {
				serverFIN = &segs[i]
			}
			if serverFIN != nil && s.Src == local && s.Flags&testnet.ACK != 0 && s.Ack == serverFIN.End() {
				return true
			}
		}
		return false
	})
}
