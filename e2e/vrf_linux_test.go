package e2e_test

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// vrfNet is a host, us, with two peers that share one address, 192.0.2.2:
// in, reached through a link that us has enslaved to the VRF device blue,
// and out, reached through a link in the default VRF. us is 192.0.2.1 on
// both links and accepts connections that arrive through the VRF on
// unbound sockets (net.ipv4.tcp_l3mdev_accept=1), as a router serving
// several VRFs on one BGP port does.
type vrfNet struct {
	us, in, out *testnet.Host
	vrf         int // blue's ifindex in us
}

var (
	vrfUs   = netip.MustParseAddr("192.0.2.1")
	vrfPeer = netip.MustParseAddr("192.0.2.2")
)

func newVRFNet(t *testing.T) vrfNet {
	t.Helper()
	testenv.Require(t, testenv.VRF)
	n := testnet.New(t)
	v := vrfNet{us: n.Host("us"), in: n.Host("in"), out: n.Host("out")}
	inLink, _ := n.Link(v.us, v.in) // 192.0.2.1 and .2
	outLink, _ := n.Link(v.us, v.out)
	v.us.IP(t, "link", "add", "blue", "type", "vrf", "table", "10")
	v.us.IP(t, "link", "set", "blue", "up")
	v.us.IP(t, "link", "set", inLink.Name, "master", "blue")
	inLink.SetUp(t, true)
	// Only now, with the first link's routes in the VRF's table, can the
	// default VRF take the same prefix.
	v.us.IP(t, "addr", "add", vrfUs.String()+"/29", "dev", outLink.Name)
	v.out.IP(t, "addr", "add", vrfPeer.String()+"/29", "dev", outLink.Peer.Name)
	v.us.Sysctl(t, "ipv4/tcp_l3mdev_accept", "1")
	require.NoError(t, v.us.Do(func() error {
		ifi, err := net.InterfaceByName("blue")
		if err == nil {
			v.vrf = ifi.Index
		}
		return err
	}))
	return v
}

// vrfKey is a host key for a through the interface ifindex only.
func vrfKey(a netip.Addr, secret string, ifindex int) tcpmd5.Key {
	k := testkit.HostKey(a, secret)
	k.Ifindex = ifindex
	return k
}

// TestInterfaceKeyListener keys a listener for 192.0.2.2 through the VRF
// only: the peer in the VRF connects with the key; the same address through
// the default VRF is refused signed (the kernel holds no key for it there:
// TCPMD5Unexpected) and unsigned (the Listener's policy resets it).
func TestInterfaceKeyListener(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	v := newVRFNet(t)
	ln := listenIn(t, v.us, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{vrfKey(vrfPeer, testkit.SecretA, v.vrf)}}, "tcp4", ":0")
	testkit.ServeEcho(t, ln)
	target := net.JoinHostPort(vrfUs.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))

	c, err := dialIn(v.in, netDialer(testkit.HostKey(vrfUs, testkit.SecretA)), "tcp4", target)
	require.NoError(t, err, "the peer in the VRF, signing with the VRF's key")
	testkit.Ping(t, c)
	c.Close()

	before := countersIn(t, v.us)
	c, err = dialIn(v.out, refusing(netDialer(testkit.HostKey(vrfUs, testkit.SecretA))), "tcp4", target)
	testkit.RequireRefused(t, c, err)
	assert.Positive(t, before.Delta(countersIn(t, v.us), netstat.MD5Unexpected)[netstat.MD5Unexpected],
		"a signed SYN from the same address outside the VRF must be dropped as unexpected")

	refused := ln.RefusedUnsigned()
	c, err = dialIn(v.out, netDialer(), "tcp4", target)
	if err == nil { // the reset may come before or after connect returns
		defer c.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(testkit.MustConnect)))
		_, err = c.Read(make([]byte, 1))
	}
	require.ErrorIs(t, err, syscall.ECONNRESET, "an unsigned peer outside the VRF must be reset, not taken for the keyed one")
	require.Eventually(t, func() bool { return ln.RefusedUnsigned() == refused+1 }, testkit.MustConnect, 10*time.Millisecond)
}

// TestInterfaceKeyDialer gives a Dialer a key for 192.0.2.2 through the VRF
// only. Bound to the VRF it signs and reaches the peer there; unbound, in
// the default VRF, no key applies: it refuses to dial (ErrNoKey) or, with
// AllowUnsigned, dials unsigned and the peer there, which holds a key for
// us, drops the SYN (TCPMD5NotFound).
func TestInterfaceKeyDialer(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	v := newVRFNet(t)
	const port = "1790"
	target := net.JoinHostPort(vrfPeer.String(), port)
	var inAccepted, outAccepted *tcpmd5.Listener
	for _, p := range []struct {
		h  *testnet.Host
		ln **tcpmd5.Listener
	}{{v.in, &inAccepted}, {v.out, &outAccepted}} {
		*p.ln = listenIn(t, p.h, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.HostKey(vrfUs, testkit.SecretA)}}, "tcp4", target)
		testkit.ServeEcho(t, *p.ln)
	}

	d := netDialer(vrfKey(vrfPeer, testkit.SecretA, v.vrf))
	d.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), "blue") }); err != nil {
			return err
		}
		return serr
	}
	c, err := dialIn(v.us, d, "tcp4", target)
	require.NoError(t, err, "bound to the VRF, the Dialer signs with the VRF's key")
	testkit.Ping(t, c)
	c.Close()

	unbound := netDialer(vrfKey(vrfPeer, testkit.SecretA, v.vrf))
	_, err = dialIn(v.us, unbound, "tcp4", target)
	require.ErrorIs(t, err, tcpmd5.ErrNoKey, "outside the VRF no key applies")

	unbound.AllowUnsigned = true
	before := countersIn(t, v.out)
	c, err = dialIn(v.us, refusing(unbound), "tcp4", target)
	testkit.RequireRefused(t, c, err)
	var ne net.Error
	require.True(t, errors.As(err, &ne))
	assert.NotContains(t, err.Error(), "same key", "an unsigned dial is not described as signed")
	assert.Positive(t, before.Delta(countersIn(t, v.out), netstat.MD5NotFound)[netstat.MD5NotFound],
		"the peer outside the VRF must drop our unsigned SYN")
}

// TestParseKeyZones: a zone that names a VRF device becomes the key's
// Ifindex; one that names a plain interface, here the link enslaved to the
// VRF, is refused: the kernel confines a key to a VRF only.
func TestParseKeyZones(t *testing.T) {
	testkit.RequireMD5(t)
	t.Parallel()
	v := newVRFNet(t)
	require.NoError(t, v.us.Do(func() error {
		k, err := tcpmd5.ParseKey("fe80::1%blue", testkit.SecretA)
		if err != nil {
			return err
		}
		assert.Equal(t, v.vrf, k.Ifindex)
		k, err = tcpmd5.ParseKey("192.0.2.2%"+strconv.Itoa(v.vrf), testkit.SecretA)
		if err != nil {
			return err
		}
		assert.Equal(t, v.vrf, k.Ifindex)
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		plain := 0
		for _, ifi := range ifs {
			if ifi.Index != v.vrf && ifi.Name != "lo" {
				plain++
				_, err := tcpmd5.ParseKey("fe80::1%"+ifi.Name, testkit.SecretA)
				assert.ErrorContains(t, err, "interface "+ifi.Name+" is not a VRF device", ifi.Name)
			}
		}
		assert.Positive(t, plain, "us has links besides the VRF")
		return nil
	}))
}
