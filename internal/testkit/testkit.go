// Package testkit holds what the tests of the tcpmd5 package and its
// end-to-end tests (e2e) share: fake secrets, timeouts, listeners that
// echo, dialers from a loopback source, the checks for a dropped SYN, the
// drop counters and a leak check. Every function fails the test it is given.
package testkit

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// The secrets of these tests: obviously fake, and distinct so a test can
// tell which one a peer holds.
const (
	SecretA = "fake-secret-alpha"
	SecretB = "fake-secret-bravo"
)

// RefuseAfter is how long a dial waits before a test calls it refused: the
// kernel drops unverifiable SYNs in silence, so refusal is a timeout. The
// first SYN retransmission is at 1s, so 700ms sees only the first SYN.
// Dials that must succeed wait MustConnect instead, which no kernel, however
// slow, comes near.
const (
	RefuseAfter = 700 * time.Millisecond
	MustConnect = 30 * time.Second
)

// RequireMD5 skips t, or fails it under CI, where the kernel does not sign.
func RequireMD5(t testing.TB) {
	t.Helper()
	if !tcpmd5.Supported() {
		testenv.Missing(t, "this kernel does not sign TCP segments (no CONFIG_TCP_MD5SIG, or a sandbox)", "run the tests on a Linux kernel with CONFIG_TCP_MD5SIG=y")
	}
}

// RequireIPv6 skips t on a kernel without IPv6 (ipv6.disable=1, or no
// ipv6 module): such hosts are IPv4 only by design.
func RequireIPv6(t testing.TB) {
	t.Helper()
	testenv.Require(t, testenv.IPv6)
}

// Key parses a key for peer, failing t if it does not parse.
func Key(t testing.TB, peer, secret string) tcpmd5.Key {
	t.Helper()
	k, err := tcpmd5.ParseKey(peer, secret)
	require.NoError(t, err)
	return k
}

// Listen starts lc on address and closes the listener when t ends.
func Listen(t testing.TB, lc *tcpmd5.ListenConfig, network, address string) *tcpmd5.Listener {
	t.Helper()
	ln, err := lc.Listen(context.Background(), network, address)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ServeEcho accepts connections on ln and echoes what they send until ln is
// closed; t's cleanup closes ln and the connections it accepted (a peer
// whose close the kernel drops, say for a key it no longer holds, would
// leave one open for ever) and waits for every goroutine. The
// connections it accepts come out of the channel it returns, for tests that
// look at the server's side, as long as it has room (16).
func ServeEcho(t testing.TB, ln net.Listener) <-chan *net.TCPConn {
	t.Helper()
	accepted := make(chan *net.TCPConn, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			if tc, ok := c.(*net.TCPConn); ok {
				select {
				case accepted <- tc:
				default:
				}
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
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return accepted
}

// Dialer returns a Dialer from source address src with keys, for dials
// that must succeed; DropDial shortens its timeout for those that must not.
func Dialer(src string, keys ...tcpmd5.Key) *tcpmd5.Dialer {
	d := &tcpmd5.Dialer{Keys: keys}
	d.Timeout = MustConnect
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	return d
}

// DropDial dials address with a copy of d that gives up after RefuseAfter
// and requires the peer to have dropped the SYN, and, unless counter is "",
// that drop counter to have moved: only a test in a network namespace of its
// own (testenv.Netns) can tell. It returns the dial's error for a closer
// look.
func DropDial(t testing.TB, d *tcpmd5.Dialer, network, address, counter string) error {
	t.Helper()
	before := Counters(t)
	short := *d
	short.Timeout = RefuseAfter
	c, err := short.Dial(network, address)
	RequireRefused(t, c, err)
	if counter != "" {
		assert.Positive(t, before.Delta(Counters(t), counter)[counter], "%s did not move", counter)
	}
	return err
}

// RequireEcho dials addr with d and requires one round trip to work.
func RequireEcho(t testing.TB, d interface {
	Dial(string, string) (net.Conn, error)
}, addr string) {
	t.Helper()
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, ok := c.(*net.TCPConn)
	require.True(t, ok, "the connection is a %T, not a *net.TCPConn", c)
	Ping(t, c)
}

// Ping writes "ping" to c and requires it back, as an echo server sends it.
func Ping(t testing.TB, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err := c.Write([]byte("Ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	require.Equal(t, "Ping", string(buf))
}

// RequireRefused requires err to be the silence of a peer that dropped our
// SYN: a net.Error that timed out.
func RequireRefused(t testing.TB, c net.Conn, err error) {
	t.Helper()
	if c != nil {
		c.Close()
	}
	require.Error(t, err, "the dial connected, but the peer should have dropped its SYN")
	var ne net.Error
	require.True(t, errors.As(err, &ne), "%T is not a net.Error", err)
	require.True(t, ne.Timeout(), "want a timeout, got %v", err)
}

// Counters reads the TcpExt counters (the drop counters among them), failing t if they cannot be read.
func Counters(t testing.TB) netstat.Counters {
	t.Helper()
	c, err := netstat.Read()
	require.NoError(t, err)
	return c
}

// HostKey is the key for host a alone.
func HostKey(a netip.Addr, secret string) tcpmd5.Key {
	return tcpmd5.Key{Peer: netip.PrefixFrom(a, a.BitLen()), Secret: []byte(secret)}
}

// RequireNoLeaks fails t if, once everything t set up is cleaned up, the
// process holds more sockets or goroutines than it does now. Call it first,
// so that its check runs after every other cleanup, and not in parallel
// with other tests, whose sockets and goroutines it would count. It counts
// sockets, not every file descriptor, because os/exec, which builds the
// test networks, keeps pipes of its own for a while.
func RequireNoLeaks(t *testing.T) {
	t.Helper()
	sockets, goroutines := socketCount(t), runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			ns, ng := socketCount(t), runtime.NumGoroutine()
			if ns <= sockets && ng <= goroutines {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("leaked %d sockets and %d goroutines; goroutines now:\n%s", ns-sockets, ng-goroutines, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func socketCount(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	n := 0
	for _, e := range es {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// RequireResetByPolicy dials unsigned from d, which the kernel lets in,
// and requires the Listener to reset the connection and count it.
func RequireResetByPolicy(t testing.TB, ln *tcpmd5.Listener, d *tcpmd5.Dialer, addr string) {
	t.Helper()
	before := ln.RefusedUnsigned()
	c, err := d.Dial("tcp", addr)
	if err == nil { // the reset may come before or after connect returns
		defer c.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
	}
	require.ErrorIs(t, err, syscall.ECONNRESET, "the Listener must reset an unsigned connection")
	require.Eventually(t, func() bool { return ln.RefusedUnsigned() == before+1 }, 5*time.Second, 10*time.Millisecond)
}

// RequireAllAccepted waits until accepted reaches want, for as long as it
// keeps moving: a slow machine takes its time, but a count that stands
// still for MustConnect means connections that Accept will never hand
// over, and fails t.
func RequireAllAccepted(t testing.TB, accepted *atomic.Int64, want int64) {
	t.Helper()
	last, since := accepted.Load(), time.Now()
	for n := last; n < want; n = accepted.Load() {
		if n != last {
			last, since = n, time.Now()
		}
		if time.Since(since) > MustConnect {
			t.Fatalf("Accept handed over %d of %d connections, and no more for %v", n, want, MustConnect)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
