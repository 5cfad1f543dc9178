package drops_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// watch starts a DropWatcher for port in the caller's namespace and closes
// it when t ends.
func watch(t testing.TB, port int) *drops.Watcher {
	t.Helper()
	testenv.Require(t, testenv.Tracepoints)
	w, err := drops.Watch(drops.Filter{Port: uint16(port)})
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	for _, r := range []drops.Reason{drops.MD5Mismatch, drops.MD5Missing, drops.MD5Unexpected, drops.BadHeader} {
		require.NotContains(t, w.Missing(), r, "a kernel with drop tracepoints has every MD5 one")
	}
	return w
}

// collect reads drops from w until it holds want of them, or a quiet
// second after the deadline of MustConnect.
func collect(t testing.TB, w *drops.Watcher, want uint64) []drops.Drop {
	t.Helper()
	var got []drops.Drop
	ctx, cancel := context.WithTimeout(context.Background(), mustConnect)
	defer cancel()
	for uint64(len(got))+w.Lost() < want {
		ds, err := w.Read(ctx)
		if ctx.Err() != nil {
			break
		}
		require.NoError(t, err)
		got = append(got, ds...)
	}
	// Anything more would be a drop the kernel did not count.
	quiet, cancelQuiet := context.WithTimeout(context.Background(), time.Second)
	defer cancelQuiet()
	more, _ := w.Read(quiet)
	return append(got, more...)
}

// TestWatchDrops makes the kernel drop SYNs for each MD5 reason, over IPv4,
// IPv6 and a dual-stack listener, and requires each drop to be reported with
// its peer's address and source port, the listener's address, the reason and
// the flags, exactly as many as the kernel's counter for that reason moved.
func TestWatchDrops(t *testing.T) {
	requireMD5(t)
	for _, tc := range []struct {
		name, network, addr   string
		listenKey, src        string // the listener's key covers listenKey; the dialer dials from src
		dialSecret            string // "" dials unsigned
		dialNetwork, dialHost string
		reason                drops.Reason
		counter               string
	}{
		{"IPv4/mismatch", "tcp4", "127.0.0.1:0", "127.0.41.1", "127.0.41.1", secretB, "tcp4", "127.0.0.1", drops.MD5Mismatch, netstat.MD5Failure},
		{"IPv4/missing", "tcp4", "127.0.0.1:0", "127.0.41.1", "127.0.41.1", "", "tcp4", "127.0.0.1", drops.MD5Missing, netstat.MD5NotFound},
		{"IPv4/unexpected", "tcp4", "127.0.0.1:0", "127.0.41.1", "127.0.41.2", secretA, "tcp4", "127.0.0.1", drops.MD5Unexpected, netstat.MD5Unexpected},
		{"IPv6/mismatch", "tcp6", "[::1]:0", "::1", "::1", secretB, "tcp6", "::1", drops.MD5Mismatch, netstat.MD5Failure},
		{"IPv6/missing", "tcp6", "[::1]:0", "::1", "::1", "", "tcp6", "::1", drops.MD5Missing, netstat.MD5NotFound},
		{"IPv6/unexpected", "tcp6", "[::1]:0", "::2", "::1", secretA, "tcp6", "::1", drops.MD5Unexpected, netstat.MD5Unexpected},
		{"dual-stack/mismatch", "tcp", "[::]:0", "127.0.41.1", "127.0.41.1", secretB, "tcp4", "127.0.0.1", drops.MD5Mismatch, netstat.MD5Failure},
		{"dual-stack/missing", "tcp", "[::]:0", "127.0.41.1", "127.0.41.1", "", "tcp4", "127.0.0.1", drops.MD5Missing, netstat.MD5NotFound},
		{"dual-stack/unexpected", "tcp", "[::]:0", "127.0.41.1", "127.0.41.2", secretA, "tcp4", "127.0.0.1", drops.MD5Unexpected, netstat.MD5Unexpected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.network != "tcp4" {
				requireIPv6(t)
			}
			testenv.Netns(t) // the counters are this test's alone
			ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, tc.listenKey, secretA)}}, tc.network, tc.addr)
			port := ln.Addr().(*net.TCPAddr).Port
			w := watch(t, port)

			d := dialer(tc.src)
			d.AllowUnsigned = true
			if tc.dialSecret != "" {
				d.Keys = []tcpmd5.Key{key(t, tc.dialHost, tc.dialSecret)}
			}
			src := freePort(t, tc.dialNetwork, tc.src)
			d.LocalAddr = net.TCPAddrFromAddrPort(src)
			before := counters(t)
			dropDial(t, d, tc.dialNetwork, net.JoinHostPort(tc.dialHost, strconv.Itoa(port)), tc.counter)
			moved := before.Delta(counters(t), tc.counter)[tc.counter]

			drops := collect(t, w, moved)
			require.Zero(t, w.Lost())
			require.Len(t, drops, int(moved), "one drop reported for each the kernel counted in %s", tc.counter)
			local := netip.AddrPortFrom(netip.MustParseAddr(tc.dialHost), uint16(port))
			for _, d := range drops {
				assert.Equal(t, tc.reason, d.Reason)
				assert.Equal(t, src, d.Remote, "the peer and its source port")
				assert.Equal(t, local, d.Local)
				assert.Equal(t, "S", d.Flags)
				assert.Equal(t, "LISTEN", d.State)
				assert.Zero(t, d.L3Index)
				assert.WithinDuration(t, time.Now(), d.Time, time.Minute)
			}
		})
	}
}

// TestWatchDropsOtherNamespace: drops are global in the kernel, but a
// watcher reports only its own namespace's. A drop made in another
// namespace first is not reported; one made here after it is.
func TestWatchDropsOtherNamespace(t *testing.T) {
	requireMD5(t)
	testenv.Netns(t)
	w := watch(t, 0)

	otherPort := make(chan int, 1)
	done := make(chan struct{})
	go func() { // in a namespace of its own
		defer close(done)
		testenv.Netns(t)
		ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.41.1", secretA)}}, "tcp4", "127.0.0.1:0")
		port := ln.Addr().(*net.TCPAddr).Port
		otherPort <- port
		dropDial(t, dialer("127.0.41.1", key(t, "127.0.0.1", secretB)), "tcp4", ln.Addr().String(), netstat.MD5Failure)
	}()
	<-done
	port := <-otherPort

	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.41.1", secretA)}}, "tcp4", "127.0.0.1:0")
	mine := ln.Addr().(*net.TCPAddr).Port
	require.NotEqual(t, port, mine)
	dropDial(t, dialer("127.0.41.1", key(t, "127.0.0.1", secretB)), "tcp4", ln.Addr().String(), netstat.MD5Failure)
	drops := collect(t, w, 1)
	require.NotEmpty(t, drops, "this namespace's drop")
	for _, d := range drops {
		assert.EqualValues(t, mine, d.Local.Port(), "a drop of another namespace was reported: %+v", d)
	}
}

// TestWatchDropsErrors: without CAP_PERFMON (a child process that dropped
// every capability) the error says what is needed and matches
// os.ErrPermission; a closed watcher says so.
func TestWatchDropsErrors(t *testing.T) {
	if os.Getenv("TCPMD5_DROP_CAPS_CHILD") == "1" {
		_, err := drops.Watch(drops.Filter{})
		if err == nil {
			os.Exit(3)
		}
		os.Stdout.WriteString(err.Error())
		if errors.Is(err, os.ErrPermission) {
			os.Exit(0)
		}
		os.Exit(4)
	}
	w := watch(t, 0)
	require.NoError(t, w.Close())
	_, err := w.Read(context.Background())
	require.ErrorIs(t, err, net.ErrClosed)

	t.Run("no CAP_PERFMON", func(t *testing.T) {
		testenv.RequireRoot(t)
		out, code := runWithoutCaps(t, "TestWatchDropsErrors", "TCPMD5_DROP_CAPS_CHILD=1")
		require.Equal(t, 0, code, "the child's error: %s", out)
		assert.Contains(t, out, "CAP_PERFMON or root")
	})
}

// freePort returns an address on host with a port free now, for a dialer
// whose source port the test must know.
func freePort(t testing.TB, network, host string) netip.AddrPort {
	t.Helper()
	l, err := net.Listen(network, net.JoinHostPort(host, "0"))
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// runWithoutCaps runs test in a child of this test binary with env, with
// an empty capability bounding set (setpriv), so that even root has no
// capability there, and returns its output and exit code.
func runWithoutCaps(t *testing.T, test, env string) (string, int) {
	t.Helper()
	argv := testenv.WithoutCaps(t, os.Args[0], "-test.run", "^"+test+"$", "-test.count", "1")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	require.NoError(t, err, "%s", out)
	return string(out), 0
}

// TestWatchDropsBadHeader: a SYN whose MD5 option has the wrong length is
// dropped for a malformed header, whoever sent it, and reported so. The
// kernel counts no such drop, so the test sends exactly one and wants one.
func TestWatchDropsBadHeader(t *testing.T) {
	requireMD5(t)
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.41.1", secretA)}}, "tcp4", "127.0.0.1:0")
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	w := watch(t, int(dst.Port()))
	raw, err := testnet.NewRawSocket()
	require.NoError(t, err)
	defer raw.Close()
	src := netip.MustParseAddrPort("127.0.41.9:40009")
	// An MD5 option 10 bytes long, then NOPs: the kernel looks for
	// signature options only in 18 bytes of options or more.
	opts := []byte{19, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}
	require.NoError(t, raw.Send(testnet.Segment{Src: src, Dst: dst, Seq: 1, Flags: testnet.SYN, Window: 64240, RawOptions: opts}))
	got := collect(t, w, 1)
	require.Len(t, got, 1)
	assert.Equal(t, drops.BadHeader, got[0].Reason)
	assert.Equal(t, src, got[0].Remote)
	assert.Equal(t, dst, got[0].Local)
	assert.Equal(t, "S", got[0].Flags)
}
