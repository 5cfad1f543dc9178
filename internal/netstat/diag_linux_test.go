package netstat_test

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/netstat"
)

// reusePort is a Control hook that sets SO_REUSEPORT.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
		return err
	}
	return serr
}

// TestListening: sock_diag counts the sockets listening on one address and
// port, as /proc/net/tcp does, and not the connections on that port, nor
// listeners on other ports or addresses.
func TestListening(t *testing.T) {
	t.Parallel()
	lc := net.ListenConfig{Control: reusePort}
	var addr netip.AddrPort
	for i := range 3 {
		a := "127.0.0.1:0"
		if i > 0 {
			a = addr.String()
		}
		ln, err := lc.Listen(context.Background(), "tcp4", a)
		require.NoError(t, err)
		defer ln.Close()
		addr = ln.Addr().(*net.TCPAddr).AddrPort()
	}
	other, err := lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), addr.Port()).String())
	require.NoError(t, err)
	defer other.Close()
	c, err := net.Dial("tcp4", addr.String()) // an established connection on the port too
	require.NoError(t, err)
	defer c.Close()

	n, err := netstat.Listening(addr)
	require.NoError(t, err)
	assert.Equal(t, 3, n)
	socks, err := netstat.Sockets()
	require.NoError(t, err)
	proc := 0
	for _, s := range socks {
		if s.Local == addr && s.State == netstat.StateListen {
			proc++
		}
	}
	assert.Equal(t, proc, n, "sock_diag and /proc/net/tcp disagree")
	n, err = netstat.Listening(netip.AddrPortFrom(addr.Addr(), addr.Port()+1))
	require.NoError(t, err)
	assert.Zero(t, n, "no socket listens on the next port")

	v6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Logf("no IPv6 here (%v): the IPv6 half is left out", err)
		return
	}
	defer v6.Close()
	n, err = netstat.Listening(v6.Addr().(*net.TCPAddr).AddrPort())
	require.NoError(t, err)
	assert.Equal(t, 1, n)
}
