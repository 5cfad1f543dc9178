package tcpmd5_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
)

// The helpers every test of this package uses live in internal/testkit,
// which the end-to-end tests (e2e) share.
const (
	secretA     = testkit.SecretA
	secretB     = testkit.SecretB
	refuseAfter = testkit.RefuseAfter
	mustConnect = testkit.MustConnect
)

var (
	requireMD5           = testkit.RequireMD5
	requireIPv6          = testkit.RequireIPv6
	key                  = testkit.Key
	listen               = testkit.Listen
	serveEcho            = testkit.ServeEcho
	dialer               = testkit.Dialer
	dropDial             = testkit.DropDial
	requireEcho          = testkit.RequireEcho
	ping                 = testkit.Ping
	requireRefused       = testkit.RequireRefused
	counters             = testkit.Counters
	requireNoLeaks       = testkit.RequireNoLeaks
	requireResetByPolicy = testkit.RequireResetByPolicy
)

func requireDomain(t testing.TB, ln *tcpmd5.Listener, want int) {
	t.Helper()
	assert.Equal(t, want, sockopt(t, ln, unix.SOL_SOCKET, unix.SO_DOMAIN))
}

func protocol(t testing.TB, s syscall.Conn) int {
	t.Helper()
	return sockopt(t, s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
}

// sockopt reads the integer socket option level/opt of s.
func sockopt(t testing.TB, s syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := s.SyscallConn()
	require.NoError(t, err)
	var v int
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }))
	require.NoError(t, serr)
	return v
}

// plainListener listens with a net.ListenConfig, MPTCP off so that the
// socket takes keys, on address, with control as its Control hook (may be
// nil), and closes it when t ends.
func plainListener(t testing.TB, address string, control func(string, string, syscall.RawConn) error) *net.TCPListener {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	lc.Control = control
	ln, err := lc.Listen(context.Background(), "tcp4", address)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// hostPrefix returns the n-th host of 127.128.0.0/9, an address range only
// key-capacity tests use.
func hostPrefix(n int) netip.Prefix {
	a := netip.AddrFrom4([4]byte{127, 128 | byte(n>>16), byte(n >> 8), byte(n)})
	return netip.PrefixFrom(a, 32)
}

func itoa(n int) string { return strconv.Itoa(n) }

func readFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	return string(b)
}
