package tcpmd5_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

func TestSupported(t *testing.T) {
	requireMD5(t)
	require.True(t, tcpmd5.Supported())
}

// TestSignatures checks each verdict against the kernel's drop counters, in
// a network namespace per case so that no other test's traffic moves them.
func TestSignatures(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	tests := []struct {
		name    string
		src     string       // the dialer's source address
		keys    []tcpmd5.Key // the dialer's keys; none dials unsigned
		counter string       // the drop counter that must move; "" for a connection that works
	}{
		{name: "right key connects", src: "127.0.10.1", keys: []tcpmd5.Key{key(t, "127.0.0.1", secretA)}},
		{name: "wrong key is dropped", src: "127.0.10.1", keys: []tcpmd5.Key{key(t, "127.0.0.1", secretB)}, counter: netstat.MD5Failure},
		{name: "unsigned dial to a keyed listener is dropped", src: "127.0.10.1", counter: netstat.MD5NotFound},
		{name: "signed dial to a listener without our key is dropped", src: "127.0.10.2", keys: []tcpmd5.Key{key(t, "127.0.0.1", secretA)}, counter: netstat.MD5Unexpected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.10.1", secretA)}}, "tcp4", "127.0.0.1:0")
			serveEcho(t, ln)
			before := counters(t)
			d := dialer(tt.src, tt.keys...)
			if tt.counter != "" {
				d.Timeout = refuseAfter
			}
			c, err := d.Dial("tcp", ln.Addr().String())
			moved := before.Delta(counters(t), netstat.MD5Counters...)
			if tt.counter == "" {
				require.NoError(t, err)
				defer c.Close()
				ping(t, c)
				for _, n := range netstat.MD5Counters {
					assert.Zero(t, moved[n], "%s moved on a good connection", n)
				}
				return
			}
			requireRefused(t, c, err)
			assert.Positive(t, moved[tt.counter], "%s did not move: %v", tt.counter, moved)
			if len(tt.keys) > 0 { // a signed dial says what to check
				assert.Contains(t, err.Error(), "same key")
			}
		})
	}
}

// TestTimeoutErrorWithNilLocalAddr dials signed from a Dialer whose
// LocalAddr is a nil *net.TCPAddr, the zero value of a common variable: the
// timeout's message names no address and does not panic.
func TestTimeoutErrorWithNilLocalAddr(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.11.2", secretA)}}, "tcp4", "127.0.0.1:0")
	var laddr *net.TCPAddr
	d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{key(t, "127.0.0.1", secretB)}}
	d.LocalAddr = laddr
	err := dropDial(t, d, "tcp", ln.Addr().String(), "")
	var msg string
	require.NotPanics(t, func() { msg = err.Error() })
	assert.Contains(t, msg, "holds the same key for this host's source address")
}

func TestTimeoutErrorIsActionable(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.11.1", secretA)}}, "tcp4", "127.0.0.1:0")
	d := dialer("127.0.11.1", key(t, "127.0.0.1", secretB))

	t.Run("Dialer.Timeout", func(t *testing.T) {
		t.Parallel()
		err := dropDial(t, d, "tcp", ln.Addr().String(), "")
		var oe *net.OpError
		require.ErrorAs(t, err, &oe)
		assert.Equal(t, "dial", oe.Op)
		assert.Contains(t, err.Error(), "i/o timeout")
		assert.Contains(t, err.Error(), "holds the same key for 127.0.11.1")
		assert.NotContains(t, err.Error(), secretB)
	})
	t.Run("context deadline", func(t *testing.T) {
		t.Parallel()
		nd := *d
		nd.Timeout = 0
		ctx, cancel := context.WithTimeout(context.Background(), refuseAfter)
		defer cancel()
		c, err := nd.DialContext(ctx, "tcp", ln.Addr().String())
		requireRefused(t, c, err)
		// The chain keeps net's own error: the context's deadline, or the
		// socket deadline net set from it, whichever fired first.
		assert.True(t, errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded), "%v", err)
		assert.Contains(t, err.Error(), "same key")
	})
	t.Run("unsigned timeouts stay as they are", func(t *testing.T) {
		t.Parallel()
		nd := dialer("127.0.11.1") // covered by the listener's key, so its unsigned SYN is dropped
		err := dropDial(t, nd, "tcp", ln.Addr().String(), "")
		assert.NotContains(t, err.Error(), "same key")
	})
}

func TestPrefixKey(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{
		key(t, "127.0.12.0/24", secretA),
		key(t, "127.0.12.128/25", secretB), // the longer prefix wins for its half
	}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()
	server := key(t, "127.0.0.1", secretA)
	serverB := key(t, "127.0.0.1", secretB)

	t.Run("inside /24", func(t *testing.T) {
		t.Parallel()
		requireEcho(t, dialer("127.0.12.9", server), addr)
	})
	t.Run("inside /25 takes its own key", func(t *testing.T) {
		t.Parallel()
		requireEcho(t, dialer("127.0.12.200", serverB), addr)
		dropDial(t, dialer("127.0.12.201", server), "tcp", addr, "")
	})
	t.Run("outside the prefix", func(t *testing.T) {
		t.Parallel()
		dropDial(t, dialer("127.0.13.9", server), "tcp", addr, "")
	})
	t.Run("dialer prefix key", func(t *testing.T) {
		t.Parallel()
		requireEcho(t, dialer("127.0.12.10", key(t, "127.0.0.0/8", secretA)), addr)
	})
	t.Run("dialer takes the longest prefix", func(t *testing.T) {
		t.Parallel()
		d := dialer("127.0.12.11", key(t, "127.0.0.0/8", secretB), key(t, "127.0.0.0/30", secretA), key(t, "0.0.0.0/0", secretB))
		requireEcho(t, d, addr)
	})
}

func TestDualStackListenerTakesIPv4Keys(t *testing.T) {
	requireMD5(t)
	requireIPv6(t)
	t.Parallel()
	for _, address := range []string{"[::]:0", ":0"} {
		t.Run(address, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{
				key(t, "127.0.14.0/24", secretA),
				key(t, "::1", secretA),
			}}, "tcp", address)
			serveEcho(t, ln)
			requireDomain(t, ln, unix.AF_INET6)
			port := ln.Addr().(*net.TCPAddr).Port
			v4 := net.JoinHostPort("127.0.0.1", itoa(port))
			v6 := net.JoinHostPort("::1", itoa(port))
			requireEcho(t, dialer("127.0.14.1", key(t, "127.0.0.1", secretA)), v4)
			requireEcho(t, dialer("::1", key(t, "::1", secretA)), v6)
			dropDial(t, dialer("127.0.14.2", key(t, "127.0.0.1", secretB)), "tcp", v4, netstat.MD5Failure)

			// A live key for an IPv4 host goes in v4-mapped too.
			require.NoError(t, ln.SetKey(key(t, "127.0.15.1", secretB)))
			requireEcho(t, dialer("127.0.15.1", key(t, "127.0.0.1", secretB)), v4)
			assert.Len(t, ln.Keys(), 3)
		})
	}
}

// TestListenAnyAddress listens as BGP speakers do, "tcp" on ":port", with
// IPv4 keys: the socket is dual-stack where the host has IPv6 and IPv4 where
// it has not (ipv6.disable=1), and signing works either way.
func TestListenAnyAddress(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.14.3", secretA)}}, "tcp", ":0")
	serveEcho(t, ln)
	family := unix.AF_INET
	if ok, _, _ := testenv.Has(testenv.IPv6); ok {
		family = unix.AF_INET6
	}
	requireDomain(t, ln, family)
	v4 := net.JoinHostPort("127.0.0.1", itoa(ln.Addr().(*net.TCPAddr).Port))
	requireEcho(t, dialer("127.0.14.3", key(t, "127.0.0.1", secretA)), v4)
	dropDial(t, dialer("127.0.14.3", key(t, "127.0.0.1", secretB)), "tcp", v4, netstat.MD5Failure)
}

func TestTCP6(t *testing.T) {
	requireMD5(t)
	requireIPv6(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "::1", secretA)}}, "tcp6", "[::1]:0")
	serveEcho(t, ln)
	requireDomain(t, ln, unix.AF_INET6)
	requireEcho(t, dialer("::1", key(t, "::1/128", secretA)), ln.Addr().String())
	dropDial(t, dialer("::1", key(t, "::1", secretB)), "tcp6", ln.Addr().String(), netstat.MD5Failure)
}

// TestIPv4KeyOnIPv6OnlySocket: a tcp6 socket is IPv6-only, so an IPv4 key
// there could never match; Listen and SetKey say so instead of taking it.
func TestIPv4KeyOnIPv6OnlySocket(t *testing.T) {
	requireMD5(t)
	requireIPv6(t)
	t.Parallel()
	_, err := tcpmd5.Listen("tcp6", "[::1]:0", key(t, "127.0.0.1", secretA))
	require.ErrorContains(t, err, "key for 127.0.0.1: the socket is IPv6-only (tcp6), so no IPv4 peer can reach it")
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "::1", secretA)}}, "tcp6", "[::1]:0")
	require.ErrorContains(t, ln.SetKey(key(t, "127.0.0.0/8", secretA)), "IPv6-only")
	assert.Len(t, ln.Keys(), 1)
	require.NoError(t, ln.RemoveKey(key(t, "127.0.0.0/8", secretA)), "removing what was never installed is not an error")
}

func TestIPv6KeyOnIPv4Socket(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	_, err := tcpmd5.Listen("tcp4", "127.0.0.1:0", key(t, "2001:db8::1", secretA))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "an IPv6 peer cannot be keyed on an IPv4 socket")
	var oe *net.OpError
	assert.ErrorAs(t, err, &oe)

	c, err := dialer("127.0.0.1", key(t, "::/0", secretA)).Dial("tcp4", "127.0.0.1:9")
	require.ErrorIs(t, err, tcpmd5.ErrNoKey, "an IPv6 key does not cover an IPv4 destination")
	require.Nil(t, c)
}

// TestListenersArePlainTCP checks that keyed listeners are not MPTCP, which
// Go 1.24+ makes the default and which takes no MD5 keys.
func TestListenersArePlainTCP(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	t.Run("a net.ListenConfig socket is MPTCP and takes no key", func(t *testing.T) {
		testenv.Require(t, testenv.MPTCP)
		t.Parallel()
		var plain net.ListenConfig
		pl, err := plain.Listen(context.Background(), "tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer pl.Close()
		require.Equal(t, unix.IPPROTO_MPTCP, protocol(t, pl.(*net.TCPListener)), "Go 1.24+ listeners are MPTCP where the kernel has it")
		// The kernel answers ENOPROTOOPT; the error says what to do.
		err = tcpmd5.SetKeys(pl.(*net.TCPListener), key(t, "127.0.0.1", secretA))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "SetMultipathTCP(false)")
		assert.NotErrorIs(t, err, tcpmd5.ErrMD5Unsupported, "MPTCP is a fixable configuration, not a kernel without MD5")
	})

	lc := &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.0.1", secretA)}}
	lc.SetMultipathTCP(true) // the caller's wish cannot win over the keys
	ln := listen(t, lc, "tcp", "127.0.0.1:0")
	assert.Equal(t, unix.IPPROTO_TCP, protocol(t, ln))
}

// TestOptionMemoryFull shows the limit a Listener works around: one socket
// takes keys until its option memory is full, then setsockopt says ENOMEM.
func TestOptionMemoryFull(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	tl := plainListener(t, "127.0.0.1:0", nil)
	var err error
	n := 0
	for ; n < 1<<16; n++ {
		err = tcpmd5.SetKeys(tl, tcpmd5.Key{Peer: hostPrefix(n), Secret: []byte(secretA)})
		if err != nil {
			break
		}
	}
	require.Error(t, err, "the kernel took %d keys on one socket without ENOMEM", n)
	require.ErrorIs(t, err, syscall.ENOMEM)
	optmem := strings.TrimSpace(readFile(t, "/proc/sys/net/core/optmem_max"))
	assert.Contains(t, err.Error(), "net.core.optmem_max is "+optmem+" bytes, about ")
	assert.NotContains(t, err.Error(), secretA)
	t.Logf("one socket held %d keys with net.core.optmem_max=%s", n, optmem)
}

func TestIfindexKeyNeedsVRF(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	lo, err := net.InterfaceByName("lo")
	require.NoError(t, err)
	_, err = tcpmd5.ParseKey("127.0.0.1%lo", secretA)
	require.ErrorContains(t, err, "interface lo is not a VRF device", "ParseKey refuses a zone that names a plain interface")
	k := tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: []byte(secretA), Ifindex: lo.Index}
	_, err = tcpmd5.Listen("tcp4", "127.0.0.1:0", k)
	require.ErrorIs(t, err, syscall.EINVAL)
	assert.Contains(t, err.Error(), "is not a VRF (L3 master) device")
}

func TestSetKeys(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	tl := plainListener(t, "127.0.0.1:0", nil)
	serveEcho(t, tl)
	addr := tl.Addr().String()
	lo, err := net.InterfaceByName("lo")
	require.NoError(t, err)

	t.Run("a refused key leaves the keys before it installed", func(t *testing.T) {
		err := tcpmd5.SetKeys(tl,
			key(t, "127.0.16.1", secretA),
			key(t, "127.0.16.2", secretA),
			tcpmd5.Key{Peer: hostPrefix(3), Secret: []byte(secretA), Ifindex: lo.Index})
		require.ErrorIs(t, err, syscall.EINVAL)
		assert.Contains(t, err.Error(), "the 2 keys before it are installed")
		// Deleting them could have left a peer that had a key with none.
		requireEcho(t, dialer("127.0.16.1", key(t, "127.0.0.1", secretA)), addr)
		requireEcho(t, dialer("127.0.16.2", key(t, "127.0.0.1", secretA)), addr)
	})
	t.Run("an invalid key applies nothing", func(t *testing.T) {
		err := tcpmd5.SetKeys(tl, key(t, "127.0.16.3", secretA), tcpmd5.Key{Peer: hostPrefix(4)})
		require.ErrorContains(t, err, "the secret is empty")
		requireEcho(t, dialer("127.0.16.3"), addr)
	})
	t.Run("keys apply", func(t *testing.T) {
		require.NoError(t, tcpmd5.SetKeys(tl, key(t, "127.0.16.5", secretA)))
		requireEcho(t, dialer("127.0.16.5", key(t, "127.0.0.1", secretA)), addr)
		dropDial(t, dialer("127.0.16.5"), "tcp", addr, "")
	})
	t.Run("not a TCP socket", func(t *testing.T) {
		u, err := net.ListenPacket("udp4", "127.0.0.1:0")
		require.NoError(t, err)
		defer u.Close()
		err = tcpmd5.SetKeys(u.(*net.UDPConn), key(t, "127.0.0.1", secretA))
		require.ErrorContains(t, err, "not TCP")
		assert.NotErrorIs(t, err, tcpmd5.ErrMD5Unsupported)
	})
}

func TestErrorsNeverShowTheSecret(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	const secret = "fake-secret-must-not-leak"
	lo, err := net.InterfaceByName("lo")
	require.NoError(t, err)
	var errs []error
	_, err = tcpmd5.Listen("tcp4", "127.0.0.1:0", tcpmd5.Key{Peer: hostPrefix(1), Secret: []byte(secret), Ifindex: lo.Index})
	errs = append(errs, err)
	_, err = tcpmd5.Listen("tcp4", "127.0.0.1:0", key(t, "2001:db8::1", secret))
	errs = append(errs, err)
	_, err = dialer("127.0.17.1", key(t, "127.0.0.2", secret)).Dial("tcp", "127.0.0.1:1")
	errs = append(errs, err)
	errs = append(errs, dropDial(t, dialer("127.0.17.1", key(t, "127.0.0.1", secret)), "tcp", "127.0.0.1:1", "")) // the unsigned RST is dropped: a timeout
	for _, err := range errs {
		require.Error(t, err)
		assert.NotContains(t, err.Error(), secret)
		assert.NotContains(t, strings.ToLower(errors.Unwrap(err).Error()), secret)
	}
}
