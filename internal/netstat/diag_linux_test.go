package netstat_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
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

// BenchmarkListening counts a port's listeners through sock_diag with 30
// and with 30,000 TIME_WAIT sockets on the host (a network namespace of
// its own), beside a read of /proc/net/tcp, the way that walks them all:
// the listener group's same-address check must cost the same either way.
func BenchmarkListening(b *testing.B) {
	testenv.Netns(b)
	ln, err := (&net.ListenConfig{Control: reusePort}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	waiting := 0
	// timeWait leaves n more sockets in TIME_WAIT: connections the dialling
	// side closes first, from addresses of their own.
	timeWait := func(n int) {
		for range n {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 9, byte(waiting>>8), byte(waiting))}}
			c, err := d.Dial("tcp4", addr.String())
			require.NoError(b, err)
			s, err := ln.Accept()
			require.NoError(b, err)
			require.NoError(b, c.Close())
			_, _ = s.Read(make([]byte, 1)) // the FIN
			require.NoError(b, s.Close())
			waiting++
		}
	}
	enter := testenv.Here(b) // a sub-benchmark runs in a goroutine of its own
	for _, n := range []int{30, 30000} {
		timeWait(n - waiting)
		b.Run(fmt.Sprintf("sock_diag/%d-TIME_WAIT", n), func(b *testing.B) {
			require.NoError(b, enter())
			for b.Loop() {
				got, err := netstat.Listening(addr)
				require.NoError(b, err)
				require.Equal(b, 1, got)
			}
		})
		b.Run(fmt.Sprintf("proc-net-tcp/%d-TIME_WAIT", n), func(b *testing.B) {
			require.NoError(b, enter())
			for b.Loop() {
				f, err := os.Open("/proc/thread-self/net/tcp") // this namespace's, as the thread is in it
				require.NoError(b, err)
				socks, err := netstat.ParseSockets(f)
				f.Close()
				require.NoError(b, err)
				require.GreaterOrEqual(b, len(socks), n)
			}
		})
	}
}
