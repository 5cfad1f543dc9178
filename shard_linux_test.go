package tcpmd5_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
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
)

// peer4 returns the n-th peer address of a /16 block of 127.32.0.0/11 (the
// range these tests use), skipping .0 and .255.
func peer4(block, n int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(32 + block + n/(254*256)), byte(n / 254), byte(n%254 + 1)})
}

// peerSecret is peer n's own secret.
func peerSecret(n int) []byte { return []byte("fake-secret-peer-" + strconv.Itoa(n)) }

// peerKeys returns, for peers [from, to) of addr, each one's host key.
func peerKeys(addr func(int) netip.Addr, from, to int) []tcpmd5.Key {
	keys := make([]tcpmd5.Key, 0, to-from)
	for n := from; n < to; n++ {
		a := addr(n)
		keys = append(keys, tcpmd5.Key{Peer: netip.PrefixFrom(a, a.BitLen()), Secret: peerSecret(n)})
	}
	return keys
}

// acceptAndReset accepts on ln until it is closed, closes each connection
// and counts them. Dialers close first with a reset (closeReset), so that
// no connection leaves a TIME_WAIT behind on either side.
func acceptAndReset(t testing.TB, ln net.Listener) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			n.Add(1)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return &n
}

// dialAs dials addr from src signing with secret (none: unsigned), with
// the listener's address as the key's peer.
func dialAs(ctx context.Context, src netip.Addr, secret []byte, addr string, timeout time.Duration, control func(string, string, syscall.RawConn) error) (net.Conn, error) {
	d := &tcpmd5.Dialer{}
	d.Timeout = timeout
	d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	d.Control = control
	if secret != nil {
		ap := netip.MustParseAddrPort(addr)
		d.Keys = []tcpmd5.Key{{Peer: netip.PrefixFrom(ap.Addr(), ap.Addr().BitLen()), Secret: secret}}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// dialAll dials every peer in [0, n) of addr with its own key, workers at
// a time, and returns the errors by peer. Each worker first calls enter,
// if not nil.
func dialAll(addr func(int) netip.Addr, n int, target string, control func(string, string, syscall.RawConn) error, enter func()) map[int]error {
	return dialEach(n, enter, func(i int) (net.Conn, error) {
		return dialAs(context.Background(), addr(i), peerSecret(i), target, 5*time.Second, control)
	})
}

// dialEach dials peers [0, n) with dial, workers at a time, closes each
// connection with a reset, and returns the errors by peer. Each worker
// first calls enter, if not nil.
func dialEach(n int, enter func(), dial func(i int) (net.Conn, error)) map[int]error {
	const workers = 32
	var mu sync.Mutex
	failed := make(map[int]error)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			if enter != nil {
				enter()
			}
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := dial(i)
				if err != nil {
					mu.Lock()
					failed[i] = err
					mu.Unlock()
					continue
				}
				closeReset(c)
			}
		})
	}
	wg.Wait()
	return failed
}

// requireRefusedPeers dials a spread of peers of addr unsigned and with a
// wrong secret, and requires the kernel to drop every SYN. Each dialing
// goroutine first calls enter, if not nil.
func requireRefusedPeers(t *testing.T, addr func(int) netip.Addr, n int, target string, control func(string, string, syscall.RawConn) error, enter func()) {
	t.Helper()
	var wg sync.WaitGroup
	for i := 0; i < n; i += n/8 + 1 {
		for _, secret := range [][]byte{nil, []byte("fake-secret-wrong")} {
			wg.Go(func() {
				if enter != nil {
					enter()
				}
				c, err := dialAs(context.Background(), addr(i), secret, target, refuseAfter, control)
				if c != nil {
					c.Close()
				}
				assert.Error(t, err, "peer %d (%s) connected with secret %q", i, addr(i), secret)
				var ne net.Error
				if assert.ErrorAs(t, err, &ne) {
					assert.True(t, ne.Timeout(), "want the silence of a dropped SYN, got %v", err)
				}
			})
		}
	}
	wg.Wait()
}

// listeningSockets counts the sockets in LISTEN state on port in this
// network namespace: how many sockets a Listener's group has.
func listeningSockets(t testing.TB, port int) int {
	t.Helper()
	socks, err := netstat.Sockets()
	require.NoError(t, err)
	return netstat.Count(socks, port, netstat.StateListen)
}

// closeReset closes c with a reset instead of a FIN.
func closeReset(c net.Conn) {
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// TestTenThousandPeers gives one listener 10,000 peers with their own keys,
// half at Listen and half live, far more than a socket's option memory
// holds, and dials every one of them.
func TestTenThousandPeers(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	const peers = 10000
	tests := []struct {
		name, network, address, dial string
		block                        int
	}{
		{"tcp4", "tcp4", "127.0.0.1:0", "127.0.0.1", 2},
		{"dual-stack", "tcp", ":0", "127.0.0.1", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr := func(n int) netip.Addr { return peer4(tt.block, n) }
			ln := listen(t, &tcpmd5.ListenConfig{Keys: peerKeys(addr, 0, peers/2)}, tt.network, tt.address)
			atListen := listeningSockets(t, port(ln))
			for _, k := range peerKeys(addr, peers/2, peers) {
				require.NoError(t, ln.SetKey(k))
			}
			accepted := acceptAndReset(t, ln)
			target := net.JoinHostPort(tt.dial, itoa(port(ln)))
			sockets := listeningSockets(t, port(ln))
			t.Logf("%d keys: %d sockets after Listen with %d, %d after SetKey of the rest", peers, atListen, peers/2, sockets)
			assert.Greater(t, atListen, 1, "Listen did not spread %d keys", peers/2)
			assert.Greater(t, sockets, atListen, "SetKey did not grow the group")
			require.Len(t, ln.Keys(), peers)
			require.Equal(t, ln.Addr().String(), net.JoinHostPort(ln.Addr().(*net.TCPAddr).IP.String(), itoa(port(ln))))

			start := time.Now()
			failed := dialAll(addr, peers, target, nil, nil)
			elapsed := time.Since(start)
			for i, err := range failed {
				t.Errorf("peer %d (%s): %v", i, addr(i), err)
				if len(failed) > 5 {
					t.Fatalf("%d of %d peers failed to connect", len(failed), peers)
				}
			}
			t.Logf("%d signed handshakes in %v", peers, elapsed)
			testkit.RequireAllAccepted(t, accepted, peers)
			assert.Zero(t, ln.RefusedUnsigned())

			requireRefusedPeers(t, addr, peers, target, nil, nil)

			// A peer without a key connects at the TCP level; Accept resets it.
			// The reset may even beat the dial's own check of the handshake.
			c, err := dialAs(context.Background(), peer4(tt.block+1, 60000), nil, target, 5*time.Second, nil)
			if err == nil {
				c.Close()
			} else {
				require.ErrorIs(t, err, syscall.ECONNRESET)
			}
			require.Eventually(t, func() bool { return ln.RefusedUnsigned() == 1 }, 5*time.Second, 10*time.Millisecond)
			assert.EqualValues(t, peers, accepted.Load())
		})
	}
}

// joinNetns returns a function that moves the calling goroutine, locked to
// its thread for good, into the network namespace the calling test
// goroutine is in (see testenv.Netns).
func joinNetns(t testing.TB) func() {
	t.Helper()
	f, err := os.Open("/proc/thread-self/ns/net")
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(err)
		}
	}
}

// TestGroupGrowsUnderLoad adds keys to a live listener, growing its group
// several times, while peers already keyed dial it without pause: no
// handshake may fail or need a retransmitted SYN (TCPSynRetrans), and the
// kernel must drop no segment for its signature. The key changes wait for
// the dialers' progress, not for the clock, so that every growth happens
// under load on a slow kernel too.
func TestGroupGrowsUnderLoad(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	enter := joinNetns(t)
	const initial, total, step, dialsPerStep = 50, 5000, 100, 16
	addr := func(n int) netip.Addr { return peer4(6, n) }
	ln := listen(t, &tcpmd5.ListenConfig{Keys: peerKeys(addr, 0, initial)}, "tcp4", "127.0.0.1:0")
	accepted := acceptAndReset(t, ln)
	target := ln.Addr().String()
	require.Equal(t, 1, listeningSockets(t, port(ln)))
	before := counters(t)

	var keyed atomic.Int64
	keyed.Store(initial)
	stop := make(chan struct{})
	var dials atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			enter()
			for i := w; ; i += 7919 {
				select {
				case <-stop:
					return
				default:
				}
				n := i % int(keyed.Load())
				c, err := dialAs(context.Background(), addr(n), peerSecret(n), target, mustConnect, nil)
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("peer %d: %v", n, err))
					mu.Unlock()
					continue
				}
				closeReset(c)
				dials.Add(1)
			}
		})
	}
	for n := initial; n < total; n++ {
		require.NoError(t, ln.SetKey(peerKeys(addr, n, n+1)[0]))
		keyed.Store(int64(n + 1))
		if n%step == 0 { // let the dialers handshake with the group as it is now
			want := dials.Load() + dialsPerStep
			require.Eventually(t, func() bool { return dials.Load() >= want }, mustConnect, time.Millisecond, "the dialers stalled at %d keys", n)
		}
	}
	close(stop)
	wg.Wait()

	sockets := listeningSockets(t, port(ln))
	moved := before.Delta(counters(t), append(netstat.MD5Counters, netstat.SynRetrans)...)
	t.Logf("%d handshakes while %d keys went in and the group grew from 1 to %d sockets", dials.Load(), total-initial, sockets)
	assert.Empty(t, failures)
	assert.Greater(t, sockets, 4)
	assert.GreaterOrEqual(t, dials.Load(), int64((total-initial)/step*dialsPerStep))
	for _, name := range append(netstat.MD5Counters, netstat.SynRetrans) {
		assert.Zero(t, moved[name], "%s moved while the group grew", name)
	}
	require.Eventually(t, func() bool { return accepted.Load() == dials.Load() }, mustConnect, 10*time.Millisecond)
	assert.Zero(t, ln.RefusedUnsigned())
	require.Len(t, ln.Keys(), total)

	// The group shrinks to nothing on Close, and Accept says it is closed.
	require.NoError(t, ln.Close())
	assert.Zero(t, listeningSockets(t, port(ln)))
	_, err := ln.Accept()
	assert.ErrorIs(t, err, net.ErrClosed)
	assert.ErrorIs(t, ln.SetKey(peerKeys(addr, total, total+1)[0]), net.ErrClosed)
}

// TestIPv6Group spreads 2,500 IPv6 peers of 2001:db8::/64 over a tcp6
// listener's group in a network namespace where that prefix is local.
func TestIPv6Group(t *testing.T) {
	requireMD5(t)
	requireIPv6(t)
	t.Parallel()
	testenv.Netns(t)
	ip := testenv.RequireTool(t, "ip", "iproute2")
	// Forked from this goroutine's thread, ip runs in its namespace.
	out, err := exec.Command(ip, "-6", "route", "add", "local", "2001:db8::/64", "dev", "lo").CombinedOutput()
	require.NoError(t, err, "%s", out)
	freebind := func(_, _ string, c syscall.RawConn) error { // the sources are local by route, not assigned
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1) })
		if err != nil {
			return err
		}
		return serr
	}
	const peers = 2500
	addr := func(n int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 8: 0xfe, 12: byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	}
	ln := listen(t, &tcpmd5.ListenConfig{Keys: peerKeys(addr, 0, peers)}, "tcp6", "[::1]:0")
	requireDomain(t, ln, unix.AF_INET6)
	accepted := acceptAndReset(t, ln)
	sockets := listeningSockets(t, port(ln))
	t.Logf("%d IPv6 keys on %d sockets", peers, sockets)
	require.Greater(t, sockets, 1)

	before := counters(t)
	enter := joinNetns(t)
	failed := dialAll(addr, peers, ln.Addr().String(), freebind, enter)
	assert.Empty(t, failed)
	testkit.RequireAllAccepted(t, accepted, peers)
	moved := before.Delta(counters(t), netstat.MD5Counters...)
	for _, name := range netstat.MD5Counters {
		assert.Zero(t, moved[name], "%s moved on good connections", name)
	}
	requireRefusedPeers(t, addr, peers, ln.Addr().String(), freebind, enter)
	assert.Positive(t, before.Delta(counters(t), netstat.MD5Counters...)[netstat.MD5Failure], "wrong secrets were not dropped for their signature")
}

// TestSameUserSocketGetsNoSYN binds a second SO_REUSEPORT socket, as another
// process of the same user could, to a listener's address: the steering
// program sends every SYN to the listener's own sockets.
func TestSameUserSocketGetsNoSYN(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{AllowUnsigned: true}, "tcp4", "127.0.0.1:0")
	accepted := acceptAndReset(t, ln)
	intruder := joinGroup(t, ln.Addr().String())
	const dials = 64
	for i := range dials {
		c, err := dialAs(context.Background(), peer4(7, i), nil, ln.Addr().String(), mustConnect, nil)
		require.NoError(t, err)
		closeReset(c)
	}
	require.Eventually(t, func() bool { return accepted.Load() == dials }, mustConnect, 10*time.Millisecond)
	requireNoSYN(t, intruder)
}

// joinGroup binds a plain SO_REUSEPORT socket of this process, as another
// program of the same user could, to address, which puts it into the
// reuseport group of a listener there.
func joinGroup(t testing.TB, address string) *net.TCPListener {
	t.Helper()
	return plainListener(t, address, func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		if err != nil {
			return err
		}
		return serr
	})
}

// requireNoSYN requires that no connection reached the foreign socket.
func requireNoSYN(t testing.TB, intruder *net.TCPListener) {
	t.Helper()
	require.NoError(t, intruder.SetDeadline(time.Now()))
	c, err := intruder.Accept()
	if c != nil {
		c.Close()
	}
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a SYN reached the foreign socket")
}

// TestForeignSocketNeverTakesSYNs lets a foreign socket join a listener's
// group before it grows, after it grew and between two growths, then adds
// keys that would grow it: the listener does not grow over the foreign
// socket (the program steers by position, which that socket would take), it
// keeps its keys on the sockets it has, and every keyed peer connects while
// the foreign socket receives nothing. A socket that was there first makes
// Listen fail.
//
// Without the check (a group that grows past a foreign socket), 102 of 200
// keyed peers could not connect.
func TestForeignSocketNeverTakesSYNs(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	tests := []struct {
		name          string
		block         int
		atListen, add int
	}{
		{"before growth", 8, 50, 300},
		{"after growth", 9, 300, 300},
		{"between two growths", 10, 200, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			enter := joinNetns(t)
			addr := func(n int) netip.Addr { return peer4(tt.block, n) }
			ln := listen(t, &tcpmd5.ListenConfig{Keys: peerKeys(addr, 0, tt.atListen)}, "tcp4", "127.0.0.1:0")
			if tt.name == "between two growths" {
				require.NoError(t, growGroup(ln, 200)) // one growth more, by keys for other peers
			}
			accepted := acceptAndReset(t, ln)
			sockets := listeningSockets(t, port(ln))
			intruder := joinGroup(t, ln.Addr().String())

			total := tt.atListen
			for _, k := range peerKeys(addr, tt.atListen, tt.atListen+tt.add) {
				err := ln.SetKey(k)
				if err != nil {
					// The sockets are full (older kernels hold about 150
					// keys a socket) and the group may not grow: the
					// error says why.
					require.ErrorIs(t, err, syscall.ENOMEM)
					require.ErrorContains(t, err, "other sockets joined the listener's group")
					break
				}
				total++
			}
			assert.Equal(t, sockets+1, listeningSockets(t, port(ln)), "the group grew over the foreign socket")
			failed := dialAll(addr, total, ln.Addr().String(), nil, enter)
			assert.Empty(t, failed)
			require.Eventually(t, func() bool { return accepted.Load() == int64(total) }, mustConnect, 10*time.Millisecond)
			requireNoSYN(t, intruder)
			t.Logf("%d of %d keys on %d sockets beside a foreign one", total, tt.atListen+tt.add, sockets)
		})
	}
	t.Run("foreign socket first", func(t *testing.T) {
		t.Parallel()
		testenv.Netns(t)
		intruder := joinGroup(t, "127.0.0.1:0")
		// The steering program, attached before bind, keeps the listener's
		// first socket out of the foreign group: the kernel refuses the bind.
		_, err := tcpmd5.Listen("tcp4", intruder.Addr().String(), key(t, "127.0.0.1", secretA))
		require.ErrorIs(t, err, syscall.EADDRINUSE)
	})
}

// TestConcurrentListenOnPortZero listens on port 0 from many goroutines at
// once in a fresh namespace, where the kernel can hand two SO_REUSEPORT
// sockets on their way to listening the same port: each Listener still
// gets a group of its own, on a port of its own.
func TestConcurrentListenOnPortZero(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	enter := joinNetns(t)
	k := key(t, "127.0.25.201", secretA)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ports := make(map[int]bool)
	for range 8 {
		wg.Go(func() {
			enter()
			for range 50 {
				ln, err := tcpmd5.Listen("tcp4", "127.0.0.1:0", k)
				if !assert.NoError(t, err) {
					return
				}
				p := port(ln)
				mu.Lock()
				assert.False(t, ports[p], "two live listeners on port %d", p)
				ports[p] = true
				mu.Unlock()
				// Forgotten before it closes: once closed, its port may go
				// to another goroutine's next Listener at once.
				mu.Lock()
				delete(ports, p)
				mu.Unlock()
				ln.Close()
			}
		})
	}
	wg.Wait()
}

// TestGroupStaysBounded: prefix keys, which take room on every socket,
// never grow the group, and the one that does not fit is refused at once,
// naming optmem_max, with nothing changed. With the caller's socket filter
// taking option memory the Listener does not count, host keys grow the
// group as far as it helps, and the one the kernel refuses all the same
// shrinks it back to where it was.
func TestGroupStaysBounded(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	prefix := func(i int) tcpmd5.Key {
		return tcpmd5.Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(192 + i>>8), byte(i), 0}), 24), Secret: []byte(secretB)}
	}
	host := func(i int) tcpmd5.Key { return tcpmd5.Key{Peer: hostPrefix(i), Secret: []byte(secretA)} }
	var lc tcpmd5.ListenConfig
	lc.Keys = []tcpmd5.Key{host(0)}
	ln := listen(t, &lc, "tcp4", "127.0.0.1:0")
	p := port(ln)

	var err error
	prefixes := 0
	for ; prefixes < 4096; prefixes++ {
		if err = ln.SetKey(prefix(prefixes)); err != nil {
			break
		}
	}
	require.Error(t, err, "a socket's option memory holds fewer than 4,096 keys")
	assert.Contains(t, err.Error(), "net.core.optmem_max")
	t.Logf("one socket took %d prefix keys beside a host key: %v", prefixes, err)
	assert.Equal(t, 1, listeningSockets(t, p), "prefix keys grew the group")
	assert.Len(t, ln.Keys(), prefixes+1, "the refused key changed the keys")

	// Prefix keys that leave 30% of a socket's room for host keys, and a
	// filter that takes a quarter of its option memory: the group grows
	// for host keys until the kernel refuses one, which leaves the group
	// as it found it.
	keep := (prefixes + 1) * 70 / 100
	for i := range prefixes - keep {
		require.NoError(t, ln.RemoveKey(prefix(i)))
	}
	// The option memory, from the keys it held (a key costs 136 bytes):
	// a namespace of an older kernel has no net.core.optmem_max to read.
	optmem := (prefixes + 1) * 136
	insns := min(4096, optmem/4/8) // a classic BPF instruction is 8 bytes
	ln2 := listen(t, &tcpmd5.ListenConfig{
		ListenConfig: net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error { return setFilter(t, c, insns) }},
		Keys:         ln.Keys(),
	}, "tcp4", "127.0.0.1:0")
	require.NoError(t, ln.Close())
	p = port(ln2)
	for i := 1; i < 100000; i++ {
		before := listeningSockets(t, p)
		if err = ln2.SetKey(host(i)); err != nil {
			// The sockets the key added close as their accept goroutines let
			// go; /proc of this namespace is read on this goroutine's thread.
			for end := time.Now().Add(mustConnect); listeningSockets(t, p) != before && time.Now().Before(end); {
				time.Sleep(10 * time.Millisecond)
			}
			assert.Equal(t, before, listeningSockets(t, p), "the refused key left sockets behind")
			assert.Len(t, ln2.Keys(), keep+i, "the refused key changed the keys")
			t.Logf("refused host key %d on %d sockets: %v", i, before, err)
			break
		}
		require.LessOrEqual(t, listeningSockets(t, p), before+4, "one key added more than four sockets")
	}
	require.Error(t, err, "the filter's option memory must run out")
}
