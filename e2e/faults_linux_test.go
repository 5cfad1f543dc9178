package e2e_test

import (
	"errors"
	"io"
	"net"
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

// TestFaults breaks signed sessions the ways networks break them. Each case
// checks that the library reports ordinary net errors, leaves no file
// descriptor or goroutine behind, and that signed listening and dialling
// work again afterwards. The cases run one at a time, and not in parallel
// with other tests, so that the leak counts are theirs alone.
func TestFaults(t *testing.T) {
	testkit.RequireMD5(t)
	testenv.RequireRoot(t)

	t.Run("peer link goes down", func(t *testing.T) {
		testkit.RequireNoLeaks(t)
		us, peer := testnet.Pair(t)
		ln := listenIn(t, peer.Host, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{testkit.HostKey(us.Addr4, testkit.SecretA)}}, "tcp4", net.JoinHostPort(peer.Addr4.String(), "0"))
		d := userTimeoutDialer(testkit.HostKey(peer.Addr4, testkit.SecretA))
		client, server := connPair(t, us.Host, d, ln)
		exchange(t, client, server, "fake-before")

		peer.SetUp(t, false)
		err := roundTrip(client)
		require.ErrorIs(t, err, syscall.ETIMEDOUT, "a session over a dead link must time out")
		requireOpError(t, err)

		peer.SetUp(t, true)
		client, server = connPair(t, us.Host, d, ln)
		exchange(t, client, server, "fake-after")
		c, err := dialIn(us.Host, refusing(netDialer(testkit.HostKey(peer.Addr4, testkit.SecretB))), "tcp4", ln.Addr().String())
		testkit.RequireRefused(t, c, err)
	})

	t.Run("peer namespace deleted", func(t *testing.T) {
		testkit.RequireNoLeaks(t)
		us, peer := testnet.Pair(t)
		testnet.StartBIRD(t, peer.Host, birdConfig(peer.Addr4, us.Addr4, testkit.SecretA, true))
		waitListening(t, peer.Host, bgpPort)
		d := userTimeoutDialer(testkit.HostKey(peer.Addr4, testkit.SecretA))
		address := net.JoinHostPort(peer.Addr4.String(), bgpPortS)
		c, err := dialIn(us.Host, d, "tcp4", address)
		require.NoError(t, err)
		defer c.Close()
		readOpen(t, c)

		peer.Host.Delete() // BIRD killed, its namespace and our link's far end gone
		err = roundTrip(c)
		require.Error(t, err)
		t.Logf("the session ended with: %v", err)
		if !errors.Is(err, io.EOF) {
			requireOpError(t, err)
			assert.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EPIPE), "unexpected error %v", err)
		}
		us.Host.WaitFor(t, 5*time.Second, "our end of the link going away", func() bool {
			_, err := net.InterfaceByName(us.Name)
			return err != nil
		})
		c2, err := dialIn(us.Host, d, "tcp4", address)
		if c2 != nil {
			c2.Close()
		}
		require.ErrorIs(t, err, syscall.ENETUNREACH)
		requireOpError(t, err)
		assert.NotContains(t, err.Error(), "same key", "an unreachable network is not a key problem")
	})

	t.Run("listener reopened over TIME_WAIT", func(t *testing.T) {
		testkit.RequireNoLeaks(t)
		us, peer := testnet.Pair(t)
		keys := []tcpmd5.Key{testkit.HostKey(us.Addr4, testkit.SecretA)}
		ln := listenIn(t, peer.Host, &tcpmd5.ListenConfig{Keys: keys}, "tcp4", net.JoinHostPort(peer.Addr4.String(), "0"))
		address := ln.Addr().String()
		port := ln.Addr().(*net.TCPAddr).Port
		d := netDialer(testkit.HostKey(peer.Addr4, testkit.SecretA))
		for range 3 {
			client, server := connPair(t, us.Host, d, ln)
			exchange(t, client, server, "fake-before-close")
			require.NoError(t, server.Close()) // the server closes first: its end waits in TIME_WAIT
			_, err := client.Read(make([]byte, 1))
			require.ErrorIs(t, err, io.EOF)
			require.NoError(t, client.Close())
		}
		require.NoError(t, ln.Close())
		peer.Host.WaitFor(t, 5*time.Second, "connections in TIME_WAIT on the listener's port", func() bool {
			socks, err := netstat.Sockets()
			return err == nil && netstat.Count(socks, port, netstat.StateTimeWait) >= 3
		})

		ln2 := listenIn(t, peer.Host, &tcpmd5.ListenConfig{Keys: keys}, "tcp4", address)
		testkit.ServeEcho(t, ln2)
		c, err := dialIn(us.Host, d, "tcp4", address)
		require.NoError(t, err, "a signed dial to the reopened listener")
		defer c.Close()
		testkit.Ping(t, c)
		c2, err := dialIn(us.Host, refusing(netDialer(testkit.HostKey(peer.Addr4, testkit.SecretB))), "tcp4", address)
		testkit.RequireRefused(t, c2, err)
		c3, err := dialIn(us.Host, refusing(netDialer()), "tcp4", address)
		testkit.RequireRefused(t, c3, err)
	})
}

// userTimeoutDialer returns a dialer with keys whose connections give up
// after 500ms without acknowledgement (TCP_USER_TIMEOUT), set by the
// caller's own Control hook, which the Dialer runs before installing keys.
func userTimeoutDialer(keys ...tcpmd5.Key) *tcpmd5.Dialer {
	d := netDialer(keys...)
	d.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 500)
		}); err != nil {
			return err
		}
		return serr
	}
	return d
}

// roundTrip writes to c and reads the echo, returning the first error.
func roundTrip(c net.Conn) error {
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("fake-probe")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, len("fake-probe")))
	return err
}

func requireOpError(t testing.TB, err error) {
	t.Helper()
	var oe *net.OpError
	require.ErrorAs(t, err, &oe, "%v (%T) is not a *net.OpError", err, err)
}
