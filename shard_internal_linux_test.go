package tcpmd5

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestSteeringProgramMatchesShardOf checks that the kernel, running the
// steering program, sends each SYN to the socket that shardOf names for its
// source address, on IPv4 and dual-stack sockets, for group sizes around
// the powers of two where linear hashing changes level.
func TestSteeringProgramMatchesShardOf(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ network, address string }{
		{"tcp4", "127.0.0.1:0"},
		{"tcp", "[::]:0"},
	} {
		for _, n := range []int{2, 3, 4, 5, 7, 8, 9} {
			t.Run(tt.network+"/"+strconv.Itoa(n), func(t *testing.T) {
				if tt.network == "tcp" {
					testenv.Require(t, testenv.IPv6)
				}
				t.Parallel()
				l := &Listener{group: group{network: tt.network}}
				l.cfg.SetMultipathTCP(false)
				require.NoError(t, l.listenGroup(context.Background(), tt.address, n))
				defer l.closeShards()
				port := l.shards[0].ln.Addr().(*net.TCPAddr).Port

				want := make(map[netip.Addr]int)
				for i := range 64 {
					src := netip.AddrFrom4([4]byte{127, 33, byte(n), byte(i + 1)})
					want[src] = shardOf(peerHash(src), n)
					d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
					c, err := d.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
					require.NoError(t, err)
					defer c.Close()
				}
				got := make(map[netip.Addr]int)
				used := make(map[int]bool)
				for i, s := range l.shards {
					for {
						require.NoError(t, s.ln.SetDeadline(time.Now().Add(50*time.Millisecond)))
						c, err := s.ln.AcceptTCP()
						if err != nil {
							break
						}
						got[c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()] = i
						used[i] = true
						c.Close()
					}
				}
				assert.Equal(t, want, got)
				assert.Len(t, used, n, "64 sources should reach every one of %d sockets", n)
			})
		}
	}
}

// TestShardOfSplitsOneShard checks the property growth relies on: going
// from n to n+1 shards moves keys only from shard n - 2^level, and only to
// shard n.
func TestShardOfSplitsOneShard(t *testing.T) {
	for n := 1; n < 70; n++ {
		split := n - 1<<(len(strconv.FormatInt(int64(n), 2))-1)
		moved := 0
		for i := range 4096 {
			h := peerHash(netip.AddrFrom4([4]byte{127, 32, byte(i >> 8), byte(i)}))
			before, after := shardOf(h, n), shardOf(h, n+1)
			require.Less(t, before, n)
			require.Less(t, after, n+1)
			if before != after {
				require.Equal(t, split, before, "n=%d", n)
				require.Equal(t, n, after, "n=%d", n)
				moved++
			}
		}
		assert.Positive(t, moved, "growing from %d shards moved nothing", n)
	}
}

// TestPeerHashIPv6 pins the IPv6 hash against a computation by hand, so
// that it cannot drift from the steering program's word order unnoticed.
func TestPeerHashIPv6(t *testing.T) {
	a := netip.MustParseAddr("2001:db8::1:2")
	h := uint32(0x20010db8)
	for _, w := range []uint32{0, 0, 0x00010002} {
		h = h*wordMul ^ w
	}
	assert.Equal(t, mix(h), peerHash(a))
	assert.NotEqual(t, peerHash(a), peerHash(netip.MustParseAddr("2001:db8::1:3")))
}

// hostKeys returns the host keys of peers [0, n) of 127.32.0.0/11, each
// with its own secret, as the external tests' peerKeys makes them.
func hostKeys(n int) []Key {
	keys := make([]Key, 0, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{127, byte(32 + i/(254*256)), byte(i / 254), byte(i%254 + 1)})
		keys = append(keys, Key{Peer: netip.PrefixFrom(a, 32), Secret: []byte("fake-secret-peer-" + strconv.Itoa(i))})
	}
	return keys
}

// TestGrowthLetsAcceptIn: a SetKey that grows the group makes the new
// socket, with its keys, and counts the group without the listener's
// lock, so Accept hands over a signed connection meanwhile; the new
// socket joins the group and takes its SYNs only after.
func TestGrowthLetsAcceptIn(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	keys := hostKeys(hostsPerSocket)
	l, err := (&ListenConfig{Keys: keys}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	require.Len(t, l.shards, 1)
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	handed := false
	// The hook runs with l.mu released inside SetKey: it fails the test
	// with assert, never require, whose Goexit would unlock l.mu again.
	l.yielded = func() {
		c, err := dialKeyed(keys[0].Peer.Addr(), l.Addr().String(), keys[0].Secret)
		if !assert.NoError(t, err) {
			return
		}
		defer c.Close()
		select {
		case a := <-accepted:
			handed = assert.Equal(t, c.LocalAddr().String(), a.RemoteAddr().String())
			a.Close()
		case <-time.After(30 * time.Second):
			t.Error("Accept handed nothing over while the group grew")
		}
	}
	more := hostKeys(hostsPerSocket + 1)[hostsPerSocket]
	require.NoError(t, l.SetKey(more))
	assert.Len(t, l.shards, 2, "the crowded socket added one")
	assert.True(t, handed, "no connection handed over while the group grew")
}

// TestCrowdedSocketAddsOne: host keys arriving one by one grow the group by
// one socket a SetKey at most while no socket's option memory is full, so
// that no SetKey makes several sockets, each with every prefix key, while
// Accept waits; the sockets still hold hostsPerSocket host keys at most
// beside the prefix keys, but for a few crowded ones.
func TestCrowdedSocketAddsOne(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	const prefixes, hosts = 20, 3000
	var keys []Key
	for i := range prefixes {
		keys = append(keys, Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 60, byte(i), 0}), 24), Secret: []byte("fake-secret-prefix")})
	}
	lc := ListenConfig{Keys: keys}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	require.Greater(t, ln.capacity(), prefixes+hostsPerSocket, "this test needs option memory for more than %d keys a socket", prefixes+hostsPerSocket)
	grew := 0
	for n, k := range hostKeys(hosts) {
		before := len(ln.shards)
		require.NoError(t, ln.SetKey(k))
		added := len(ln.shards) - before
		require.LessOrEqual(t, added, 1, "SetKey of host %d added %d sockets", n, added)
		grew += added
	}
	assert.Greater(t, grew, 10, "the group must have grown")
	crowded := 0
	for _, s := range ln.shards {
		require.Equal(t, prefixes, s.keys.prefixes())
		if s.keys.hosts() > hostsPerSocket {
			crowded++
		}
	}
	assert.Less(t, crowded, len(ln.shards)/10, "most sockets hold at most %d host keys", hostsPerSocket)
	t.Logf("%d host keys and %d prefix keys on %d sockets, %d over %d host keys", hosts, prefixes, len(ln.shards), crowded, hostsPerSocket)
}

// TestPrefixKeysLeaveHostRoom: beside many prefix keys, a socket keeps its
// hostsPerSocket host keys while option memory holds them, so the same host
// keys make the same group they make beside none, at Listen and live.
// Prefix keys used to take host keys' room: 127 of them left each socket
// one host key, and 1,000 host keys made 4,096 sockets at Listen and 758
// live, each with every prefix key, where 14 do alone.
func TestPrefixKeysLeaveHostRoom(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	const hosts = 1000
	// Many prefix keys, short of filling option memory beside
	// hostsPerSocket host keys by a few keys' room, which the steering
	// program takes on the first socket.
	prefixes := min(127, socketCapacity()-hostsPerSocket-16)
	require.Greater(t, prefixes, hostsPerSocket/2, "this test needs option memory for more than %d keys a socket", hostsPerSocket*3/2+16)
	var prefixKeys []Key
	for i := range prefixes {
		prefixKeys = append(prefixKeys, Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 61, byte(i), 0}), 24), Secret: []byte("fake-secret-prefix")})
	}
	hosted := hostKeys(hosts)
	sockets := func(listenWith []Key, live bool) int {
		keys := listenWith
		if !live {
			keys = append(slices.Clone(listenWith), hosted...)
		}
		lc := ListenConfig{Keys: keys}
		ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		if live {
			for _, k := range hosted {
				require.NoError(t, ln.SetKey(k))
			}
		}
		for _, s := range ln.shards {
			require.Equal(t, len(listenWith), s.keys.prefixes(), "every socket holds every prefix key")
		}
		return len(ln.shards)
	}
	for _, live := range []bool{false, true} {
		alone, beside := sockets(nil, live), sockets(prefixKeys, live)
		assert.Greater(t, alone, 1)
		assert.Equal(t, alone, beside, "%d host keys (live %v): %d sockets alone, %d beside %d prefix keys", hosts, live, alone, beside, prefixes)
		t.Logf("%d host keys (live %v): %d sockets alone, %d beside %d prefix keys", hosts, live, alone, beside, prefixes)
	}
}

// TestGroupKeepsDescriptorTableAhead: a socket the group adds leaves the
// process's descriptor table a doubling ahead of it, grown by a goroutine
// of its own, so that no later socket added with the listener's lock held
// waits for the kernel to grow the table (an RCU grace period). It runs in
// a child process, whose table no other test has grown.
func TestGroupKeepsDescriptorTableAhead(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	if !InChild(t, "TCPMD5_FDTABLE_CHILD", "descriptor table of") {
		return
	}
	fdSize := func() int {
		status, err := os.ReadFile("/proc/self/status")
		require.NoError(t, err)
		for line := range strings.Lines(string(status)) {
			if v, ok := strings.CutPrefix(line, "FDSize:"); ok {
				n, err := strconv.Atoi(strings.TrimSpace(v))
				require.NoError(t, err)
				return n
			}
		}
		t.Fatal("no FDSize in /proc/self/status")
		return 0
	}
	// Fill the descriptors up to 200, so that the group's next socket
	// gets one between 128 and 255: the kernel's own table for it is 256.
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		if fd >= 200 {
			break
		}
	}
	require.Less(t, fdSize(), 512, "the table is already grown")
	lc := ListenConfig{Keys: []Key{{Peer: netip.MustParsePrefix("127.0.0.2/32"), Secret: []byte("fake-secret-a")}}}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	ln.mu.Lock()
	err = ln.grow()
	ln.mu.Unlock()
	require.NoError(t, err)
	fd, err := control(ln.shards[1].rc, func(fd int) (int, error) { return fd, nil })
	require.NoError(t, err)
	require.Less(t, fd, 256)
	deadline := time.Now().Add(10 * time.Second)
	for fdSize() < 512 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	require.GreaterOrEqual(t, fdSize(), 512, "the descriptor table must be a doubling ahead of descriptor %d", fd)
	t.Logf("descriptor table of %d slots for the group's newest descriptor %d", fdSize(), fd)
}

// BenchmarkPrefixKeyHold measures a prefix key's SetKey, then RemoveKey,
// on the group that 100,000 host keys make: the whole call (the median),
// and how long the call holds the listener, and Accept with it, at a time,
// from its start or from taking the lock again to letting it go or its
// end: the 99th percentile of those holds, which a busy machine hardly
// moves, and the longest, which a garbage collection or a stalled system
// call makes. Run it with -benchtime 10x.
func BenchmarkPrefixKeyHold(b *testing.B) {
	testenv.Require(b, testenv.MD5)
	testenv.Netns(b)
	lc := ListenConfig{Keys: hostKeys(100000)}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	var h holds
	h.watch(ln)
	var calls []time.Duration
	k := Key{Peer: netip.MustParsePrefix("10.99.0.0/16"), Secret: []byte("fake-secret-prefix")}
	for b.Loop() {
		for _, change := range []func(Key) error{ln.SetKey, ln.RemoveKey} {
			start := h.begin()
			require.NoError(b, change(k))
			h.end()
			calls = append(calls, time.Since(start))
		}
	}
	slices.Sort(calls)
	b.ReportMetric(float64(calls[len(calls)/2].Microseconds())/1000, "call-ms")
	h.report(b)
	b.ReportMetric(float64(len(ln.shards)), "sockets")
}

// BenchmarkGrowthHold measures how long SetKey holds the listener, and
// Accept with it, while host keys arrive one by one and the group grows
// from one socket to hundreds or thousands: the 99th percentile and the
// longest hold, beside the 99th percentile call, which is what the hold
// was while a growing SetKey made the new socket and counted the group
// with the lock held. Run it with -benchtime 1x.
func BenchmarkGrowthHold(b *testing.B) {
	testenv.Require(b, testenv.MD5)
	for _, hosts := range []int{20000, 100000} {
		b.Run("hosts="+strconv.Itoa(hosts), func(b *testing.B) {
			testenv.Netns(b)
			keys := hostKeys(hosts)
			var calls []time.Duration
			var h holds
			sockets := 0
			for b.Loop() {
				ln, err := (&ListenConfig{}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
				require.NoError(b, err)
				h.watch(ln)
				for _, k := range keys {
					start := h.begin()
					require.NoError(b, ln.SetKey(k))
					h.end()
					calls = append(calls, time.Since(start))
				}
				sockets = len(ln.shards)
				ln.Close()
			}
			slices.Sort(calls)
			b.ReportMetric(float64(calls[len(calls)*99/100].Microseconds())/1000, "p99-call-ms")
			h.report(b)
			b.ReportMetric(float64(sockets), "sockets")
		})
	}
}

// holds times how long the key changes of a listener hold its lock at a
// time: from a call's start, or from taking the lock again after letting
// Accept in, to letting it go, or the call's end.
type holds struct {
	since time.Time
	all   []time.Duration
}

// watch times the holds of l too, whose hooks it sets.
func (h *holds) watch(l *Listener) {
	l.yielded = func() { h.all = append(h.all, time.Since(h.since)) }
	l.relocking = func() { h.since = time.Now() }
}

// begin marks a call's start, and returns it.
func (h *holds) begin() time.Time {
	h.since = time.Now()
	return h.since
}

// end marks a call's end.
func (h *holds) end() { h.all = append(h.all, time.Since(h.since)) }

// report reports the 99th percentile hold and the longest.
func (h *holds) report(b *testing.B) {
	slices.Sort(h.all)
	b.ReportMetric(float64(h.all[len(h.all)*99/100].Microseconds())/1000, "p99-hold-ms")
	b.ReportMetric(float64(h.all[len(h.all)-1].Microseconds())/1000, "max-hold-ms")
}
