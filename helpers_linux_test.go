package tcpmd5_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// The secrets of these tests: obviously fake, and distinct so a test can
// tell which one a peer holds.
const (
	secretA = "fake-secret-alpha"
	secretB = "fake-secret-bravo"
)

// refuseAfter is how long a dial waits before a test calls it refused: the
// kernel drops unverifiable SYNs in silence, so refusal is a timeout. The
// first SYN retransmission is at 1s, so 700ms sees only the first SYN.
// Dials that must succeed wait mustConnect instead, which no kernel, however
// slow, comes near.
const (
	refuseAfter = 700 * time.Millisecond
	mustConnect = 30 * time.Second
)

func requireMD5(t testing.TB) {
	t.Helper()
	if !tcpmd5.Supported() {
		testenv.Missing(t, "this kernel does not sign TCP segments (no CONFIG_TCP_MD5SIG, or a sandbox)", "run the tests on a Linux kernel with CONFIG_TCP_MD5SIG=y")
	}
}

// requireIPv6 skips t on a kernel without IPv6 (ipv6.disable=1, or no
// ipv6 module): such hosts are IPv4 only by design.
func requireIPv6(t testing.TB) {
	t.Helper()
	testenv.Require(t, testenv.IPv6)
}

func key(t testing.TB, peer, secret string) tcpmd5.Key {
	t.Helper()
	k, err := tcpmd5.ParseKey(peer, secret)
	require.NoError(t, err)
	return k
}

// listen starts lc on address and closes the listener when t ends.
func listen(t testing.TB, lc *tcpmd5.ListenConfig, network, address string) *tcpmd5.Listener {
	t.Helper()
	ln, err := lc.Listen(context.Background(), network, address)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveEcho accepts connections on ln and echoes what they send until ln is
// closed; t's cleanup closes ln and waits for every goroutine.
func serveEcho(t testing.TB, ln net.Listener) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// dialer returns a Dialer from source address src with keys, for dials
// that must succeed; dropDial shortens its timeout for those that must not.
func dialer(src string, keys ...tcpmd5.Key) *tcpmd5.Dialer {
	d := &tcpmd5.Dialer{Keys: keys}
	d.Timeout = mustConnect
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	return d
}

// dropDial dials address with a copy of d that gives up after refuseAfter
// and requires the peer to have dropped the SYN, and, unless counter is "",
// that drop counter to have moved: only a test in a network namespace of its
// own (testenv.Netns) can tell. It returns the dial's error for a closer
// look.
func dropDial(t testing.TB, d *tcpmd5.Dialer, network, address, counter string) error {
	t.Helper()
	before := counters(t)
	short := *d
	short.Timeout = refuseAfter
	c, err := short.Dial(network, address)
	requireRefused(t, c, err)
	if counter != "" {
		assert.Positive(t, before.Delta(counters(t), counter)[counter], "%s did not move", counter)
	}
	return err
}

// requireEcho dials addr with d and requires one round trip to work.
func requireEcho(t testing.TB, d interface {
	Dial(string, string) (net.Conn, error)
}, addr string) {
	t.Helper()
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, ok := c.(*net.TCPConn)
	require.True(t, ok, "the connection is a %T, not a *net.TCPConn", c)
	ping(t, c)
}

func ping(t testing.TB, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
}

// requireRefused requires err to be the silence of a peer that dropped our
// SYN: a net.Error that timed out.
func requireRefused(t testing.TB, c net.Conn, err error) {
	t.Helper()
	if c != nil {
		c.Close()
	}
	require.Error(t, err, "the dial connected, but the peer should have dropped its SYN")
	var ne net.Error
	require.True(t, errors.As(err, &ne), "%T is not a net.Error", err)
	require.True(t, ne.Timeout(), "want a timeout, got %v", err)
}

// counters reads the signature counters, failing t if they cannot be read.
func counters(t testing.TB) netstat.Counters {
	t.Helper()
	c, err := netstat.Read()
	require.NoError(t, err)
	return c
}

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
