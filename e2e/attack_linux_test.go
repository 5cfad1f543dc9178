package e2e_test

import (
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// TestSpoofedSegments makes the attack RFC 2385 exists for. A client and a
// server talk through a router; an attacker on a third host, who sees the
// traffic at the router, sends the server a segment that claims to come from
// the client, with exactly the sequence numbers the server expects: a reset,
// or data. Without signatures the reset kills the connection and the data
// reaches the application, which proves the attack works; with them the
// server's kernel drops the segment (TCPMD5NotFound), the connection
// survives, and the next exchange carries only genuine bytes.
func TestSpoofedSegments(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	const injected = "fake-injected-data"
	for _, family := range []string{"IPv4", "IPv6"} {
		for _, attack := range []string{"RST", "data"} {
			for _, signed := range []bool{false, true} {
				name := family + "/" + attack + "/unsigned"
				if signed {
					name = family + "/" + attack + "/signed"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					if family == "IPv6" {
						testkit.RequireIPv6(t)
					}
					n, a, b, r := testnet.Routed(t)
					attacker := n.Attach(n.Host("m"), r)
					onPath := b.Peer.Capture(t) // the router's link to the server
					caddr, saddr := a.Addr4, b.Addr4
					if family == "IPv6" {
						caddr, saddr = a.Addr6, b.Addr6
					}
					lc := &tcpmd5.ListenConfig{AllowUnsigned: !signed}
					d := netDialer()
					if signed {
						lc.Keys = []tcpmd5.Key{{Peer: netip.PrefixFrom(caddr, caddr.BitLen()), Secret: []byte(testkit.SecretA)}}
						d = netDialer(tcpmd5.Key{Peer: netip.PrefixFrom(saddr, saddr.BitLen()), Secret: []byte(testkit.SecretA)})
					}
					ln := listenIn(t, b.Host, lc, "tcp", net.JoinHostPort(saddr.String(), "0"))
					client, server := connPair(t, a.Host, d, ln)
					exchange(t, client, server, "fake-hello-1")
					clientAP, serverAP := client.LocalAddr().(*net.TCPAddr).AddrPort(), client.RemoteAddr().(*net.TCPAddr).AddrPort()

					// What the attacker learns at the router: the next sequence number
					// in each direction, once the client has acknowledged the server's data.
					var rcvNxt, sndNxt uint32
					onPath.WaitFor(t, clientAP, serverAP, 5*time.Second, "the client's ACK of the server's data", func(segs []testnet.Segment) bool {
						rcvNxt, sndNxt = nextSeq(segs, clientAP), nextSeq(segs, serverAP)
						return settled(segs, clientAP, serverAP)
					})
					spoof := testnet.Segment{Src: clientAP, Dst: serverAP, Seq: rcvNxt, Ack: sndNxt, Window: 502, Flags: testnet.RST | testnet.ACK}
					if attack == "data" {
						spoof.Flags = testnet.PSH | testnet.ACK
						spoof.Payload = []byte(injected)
					}
					before := countersIn(t, b.Host)
					require.NoError(t, attacker.Host.Inject(spoof))
					onPath.WaitFor(t, clientAP, serverAP, 5*time.Second, "the spoofed segment", func(segs []testnet.Segment) bool {
						for _, s := range segs {
							if s.Seq == spoof.Seq && s.Flags == spoof.Flags && !s.MD5() {
								return true
							}
						}
						return false
					})

					buf := make([]byte, 64)
					if !signed {
						require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
						got, err := server.Read(buf)
						if attack == "RST" {
							require.ErrorIs(t, err, syscall.ECONNRESET, "the spoofed reset did not kill the unsigned connection (read %q)", buf[:got])
						} else {
							require.NoError(t, err)
							require.Equal(t, injected, string(buf[:got]), "the spoofed data did not reach the unsigned server")
						}
						return
					}
					waitCounter(t, b.Host, before, netstat.MD5NotFound, 5*time.Second)
					require.NoError(t, server.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
					got, err := server.Read(buf)
					var ne net.Error
					require.ErrorAs(t, err, &ne, "the signed server read %q after the attack", buf[:got])
					require.True(t, ne.Timeout(), "the signed connection did not survive: %v", err)
					exchange(t, client, server, "fake-hello-2")
				})
			}
		}
	}
}

// connPair dials ln from h with d and returns both ends of the connection.
func connPair(t testing.TB, h *testnet.Host, d *tcpmd5.Dialer, ln *tcpmd5.Listener) (client, server net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := dialIn(h, d, "tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	select {
	case server = <-accepted:
		require.NotNil(t, server, "Accept failed")
	case <-time.After(5 * time.Second):
		t.Fatal("the listener did not hand over the connection")
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// exchange sends msg from client to server and back, and requires each side
// to receive exactly msg.
func exchange(t testing.TB, client, server net.Conn, msg string) {
	t.Helper()
	for _, p := range [][2]net.Conn{{client, server}, {server, client}} {
		require.NoError(t, p[0].SetDeadline(time.Now().Add(5*time.Second)))
		require.NoError(t, p[1].SetDeadline(time.Now().Add(5*time.Second)))
		_, err := p[0].Write([]byte(msg))
		require.NoError(t, err)
		got := make([]byte, len(msg))
		_, err = io.ReadFull(p[1], got)
		require.NoError(t, err)
		assert.Equal(t, msg, string(got))
	}
}

// nextSeq returns the sequence number that follows the last segment from
// src among segs.
func nextSeq(segs []testnet.Segment, src netip.AddrPort) uint32 {
	var next uint32
	for _, s := range segs {
		if s.Src == src && (next == 0 || int32(s.End()-next) > 0) {
			next = s.End()
		}
	}
	return next
}

// settled reports whether segs show both sides sending data and end with
// the client acknowledging all the server sent: an idle connection whose
// every segment the capture has seen.
func settled(segs []testnet.Segment, client, server netip.AddrPort) bool {
	if len(segs) == 0 {
		return false
	}
	last := segs[len(segs)-1]
	return sentData(segs, client) && sentData(segs, server) &&
		last.Src == client && len(last.Payload) == 0 && last.Ack == nextSeq(segs, server)
}

// sentData reports whether segs hold a segment with data from src.
func sentData(segs []testnet.Segment, src netip.AddrPort) bool {
	for _, s := range segs {
		if s.Src == src && len(s.Payload) > 0 {
			return true
		}
	}
	return false
}
