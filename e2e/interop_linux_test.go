package e2e_test

import (
	"fmt"
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

// Our end of the BGP sessions, and BIRD's.
const (
	ourAS    = 65001
	birdAS   = 65002
	birdID   = "198.51.100.2"
	bgpPort  = 179
	bgpPortS = "179"
)

// birdConfig returns a BIRD 2 configuration with one BGP session from local
// to neighbor, signed with password. A passive session only listens.
func birdConfig(local, neighbor netip.Addr, password string, passive bool) string {
	channel := "ipv4"
	if local.Is6() {
		channel = "ipv6"
	}
	p := "off"
	if passive {
		p = "on"
	}
	return fmt.Sprintf(`log stderr all;
router id %s;
protocol device {}
protocol bgp peer {
	local %s as %d;
	neighbor %s as %d;
	password "%s";
	passive %s;
	connect delay time 1;
	connect retry time 1;
	%s { import none; export none; };
}
`, birdID, local, birdAS, neighbor, ourAS, password, p, channel)
}

// TestBIRDInterop runs BIRD 2 as the BGP peer in a network namespace of its
// own: with the shared password its OPEN reaches us over a signed
// connection, whichever side connects; with another password no connection
// forms, and the receiver's TCPMD5Failure counter shows why.
func TestBIRDInterop(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	for _, family := range []string{"IPv4", "IPv6"} {
		addrs := func(i *testnet.Iface) netip.Addr {
			if family == "IPv6" {
				return i.Addr6
			}
			return i.Addr4
		}
		// pair makes a subtest's two hosts, on a kernel with the family.
		pair := func(t *testing.T) (us, peer *testnet.Iface) {
			t.Helper()
			t.Parallel()
			if family == "IPv6" {
				testkit.RequireIPv6(t)
			}
			return testnet.Pair(t)
		}
		t.Run(family+"/BIRD dials our Listener", func(t *testing.T) {
			us, peer := pair(t)
			lc := &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{{Peer: netip.PrefixFrom(addrs(peer), addrs(peer).BitLen()), Secret: []byte(testkit.SecretA)}}}
			ln := listenIn(t, us.Host, lc, "tcp", net.JoinHostPort(addrs(us).String(), bgpPortS))
			capture := us.Capture(t)
			testnet.StartBIRD(t, peer.Host, birdConfig(addrs(peer), addrs(us), testkit.SecretA, false))

			require.NoError(t, ln.SetDeadline(time.Now().Add(15*time.Second)))
			c, err := ln.Accept()
			require.NoError(t, err, "BIRD did not connect")
			defer c.Close()
			assert.Equal(t, addrs(peer).String(), c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String())
			open := readOpen(t, c)
			assert.Equal(t, uint16(birdAS), open.AS)
			assert.Equal(t, birdID, open.RouterID.String())

			// On the wire, BIRD's SYN, our SYN-ACK and BIRD's OPEN are all signed.
			local, remote := unmapped(c.LocalAddr()), unmapped(c.RemoteAddr())
			segs := capture.WaitFor(t, local, remote, 5*time.Second, "BIRD's OPEN", func(segs []testnet.Segment) bool {
				return sentData(segs, remote)
			})
			for _, seg := range segs {
				assert.True(t, seg.MD5(), "an unsigned segment between BIRD and us: %v", seg)
			}
			assert.Equal(t, testnet.SYN, int(segs[0].Flags), "the capture starts with BIRD's SYN: %v", segs[0])
		})
		t.Run(family+"/our Dialer reaches BIRD", func(t *testing.T) {
			us, peer := pair(t)
			testnet.StartBIRD(t, peer.Host, birdConfig(addrs(peer), addrs(us), testkit.SecretA, true))
			waitListening(t, peer.Host, bgpPort)

			d := netDialer(tcpmd5.Key{Peer: netip.PrefixFrom(addrs(peer), addrs(peer).BitLen()), Secret: []byte(testkit.SecretA)})
			c, err := dialIn(us.Host, d, "tcp", net.JoinHostPort(addrs(peer).String(), bgpPortS))
			require.NoError(t, err)
			defer c.Close()
			open := readOpen(t, c)
			assert.Equal(t, uint16(birdAS), open.AS)
		})
		t.Run(family+"/BIRD with another password is dropped", func(t *testing.T) {
			us, peer := pair(t)
			lc := &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{{Peer: netip.PrefixFrom(addrs(peer), addrs(peer).BitLen()), Secret: []byte(testkit.SecretA)}}}
			ln := listenIn(t, us.Host, lc, "tcp", net.JoinHostPort(addrs(us).String(), bgpPortS))
			before := countersIn(t, us.Host)
			testnet.StartBIRD(t, peer.Host, birdConfig(addrs(peer), addrs(us), testkit.SecretB, false))

			// BIRD's SYN arrives and fails verification...
			waitCounter(t, us.Host, before, netstat.MD5Failure, 15*time.Second)
			// ...and no connection forms, not even after BIRD retries.
			require.NoError(t, ln.SetDeadline(time.Now().Add(1500*time.Millisecond)))
			c, err := ln.Accept()
			if c != nil {
				c.Close()
			}
			require.Error(t, err, "a connection from BIRD with another password was accepted")
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			assert.True(t, ne.Timeout())
			assert.Zero(t, ln.RefusedUnsigned(), "BIRD's SYN was signed, so nothing should reach Accept")
		})
		t.Run(family+"/our Dialer with another password is dropped by BIRD", func(t *testing.T) {
			us, peer := pair(t)
			testnet.StartBIRD(t, peer.Host, birdConfig(addrs(peer), addrs(us), testkit.SecretB, true))
			waitListening(t, peer.Host, bgpPort)
			before := countersIn(t, peer.Host)

			// BIRD listens before it keys its socket, so a SYN of the first
			// moments counts as unexpected; every dial is refused, and
			// within a few the failed signature shows.
			d := netDialer(tcpmd5.Key{Peer: netip.PrefixFrom(addrs(peer), addrs(peer).BitLen()), Secret: []byte(testkit.SecretA)})
			var moved netstat.Counters
			for end := time.Now().Add(15 * time.Second); ; {
				c, err := dialIn(us.Host, refusing(d), "tcp", net.JoinHostPort(addrs(peer).String(), bgpPortS))
				testkit.RequireRefused(t, c, err)
				assert.Contains(t, err.Error(), "holds the same key for")
				assert.NotContains(t, err.Error(), testkit.SecretA)
				moved = before.Delta(countersIn(t, peer.Host), netstat.MD5Counters...)
				if moved[netstat.MD5Failure] > 0 || time.Now().After(end) {
					break
				}
			}
			assert.Positive(t, moved[netstat.MD5Failure], "BIRD's kernel did not count our SYN as a failed signature: %v", moved)
		})
	}
}

// unmapped returns a's address and port, with a v4-mapped address as IPv4,
// the form a capture reports.
func unmapped(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
