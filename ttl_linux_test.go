package tcpmd5_test

import (
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

const minTTLDrop = "TCPMinTTLDrop"

// On loopback a segment arrives with the TTL it was sent with, so a
// listener that wants the peer at most 1 hop away (TTL 255) drops what a
// socket sends with the default TTL of 64.
func TestTTLSecurityOnLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		network  string
		listen   string
		peer     string
		keyed    bool
		dialHops int
		dropped  bool
	}{
		{name: "keyed, both sides at 1 hop", network: "tcp4", listen: "127.0.0.1:0", peer: "127.0.0.1", keyed: true, dialHops: 1},
		{name: "keyed, dialer without TTL security", network: "tcp4", listen: "127.0.0.1:0", peer: "127.0.0.1", keyed: true, dropped: true},
		{name: "unkeyed, both sides at 1 hop", network: "tcp4", listen: "127.0.0.1:0", peer: "127.0.0.1", dialHops: 1},
		{name: "unkeyed, dialer without TTL security", network: "tcp4", listen: "127.0.0.1:0", peer: "127.0.0.1", dropped: true},
		{name: "dual-stack, IPv4 peer at 1 hop", network: "tcp", listen: "[::]:0", peer: "127.0.0.1", keyed: true, dialHops: 1},
		{name: "dual-stack, IPv4 peer without", network: "tcp", listen: "[::]:0", peer: "127.0.0.1", keyed: true, dropped: true},
		{name: "IPv6 at 1 hop", network: "tcp6", listen: "[::1]:0", peer: "::1", keyed: true, dialHops: 1},
		{name: "IPv6 without", network: "tcp6", listen: "[::1]:0", peer: "::1", keyed: true, dropped: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			requireMD5(t)
			if tt.network != "tcp4" {
				requireIPv6(t)
			}
			t.Parallel()
			testenv.Netns(t)
			lc := &tcpmd5.ListenConfig{TTLSecurity: 1, AllowUnsigned: !tt.keyed}
			d := dialer(tt.peer)
			if tt.keyed {
				lc.Keys = []tcpmd5.Key{key(t, tt.peer, secretA)}
				d.Keys = []tcpmd5.Key{key(t, tt.peer, secretA)}
			}
			d.TTLSecurity = tt.dialHops
			if tt.dropped {
				d.Timeout = refuseAfter
			}
			ln := listen(t, lc, tt.network, tt.listen)
			serveEcho(t, ln)
			target := net.JoinHostPort(tt.peer, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))

			before := counters(t)
			c, err := d.Dial("tcp", target)
			moved := before.Delta(counters(t), minTTLDrop)[minTTLDrop]
			if tt.dropped {
				requireRefused(t, c, err)
				assert.Positive(t, moved, "%s did not move", minTTLDrop)
				return
			}
			require.NoError(t, err)
			defer c.Close()
			ping(t, c)
			assert.Zero(t, moved)
			level, ttl, minTTL := unix.IPPROTO_IP, unix.IP_TTL, unix.IP_MINTTL
			if tt.peer == "::1" {
				level, ttl, minTTL = unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, unix.IPV6_MINHOPCOUNT
			}
			assert.Equal(t, 255, sockopt(t, c.(*net.TCPConn), level, ttl))
			assert.Equal(t, 255, sockopt(t, c.(*net.TCPConn), level, minTTL))
		})
	}
}

// TestTTLSecurityEstablished sends into an established session with a
// lower TTL: the receiver drops the segment and counts it, and the data
// arrives once the sender's TTL is back at 255 and it retransmits.
func TestTTLSecurityEstablished(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{TTLSecurity: 1, Keys: []tcpmd5.Key{key(t, "127.0.0.1", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	d := dialer("127.0.0.1", key(t, "127.0.0.1", secretA))
	d.TTLSecurity = 1
	c, err := d.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	ping(t, c)
	tc := c.(*net.TCPConn)

	setIPOpt(t, tc, unix.IPPROTO_IP, unix.IP_TTL, 64)
	// Whatever happens, close at TTL 255: the server would drop a FIN
	// sent at 64, and serveEcho's cleanup would wait for it.
	defer setIPOpt(t, tc, unix.IPPROTO_IP, unix.IP_TTL, 255)
	before := counters(t)
	_, err = c.Write([]byte("ping"))
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
	_, err = c.Read(make([]byte, 4))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the echo server must not have seen the low-TTL segment")
	assert.Positive(t, before.Delta(counters(t), minTTLDrop)[minTTLDrop])

	setIPOpt(t, tc, unix.IPPROTO_IP, unix.IP_TTL, 255)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 4)
	_, err = c.Read(buf) // the retransmission, now at TTL 255, gets through
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))
}

func TestTTLSecurityRange(t *testing.T) {
	t.Parallel()
	for _, hops := range []int{-1, 256} {
		_, err := (&tcpmd5.ListenConfig{TTLSecurity: hops}).Listen(t.Context(), "tcp", "127.0.0.1:0")
		require.ErrorContains(t, err, "give 1 to 255 hops")
		d := &tcpmd5.Dialer{TTLSecurity: hops}
		_, err = d.Dial("tcp", "127.0.0.1:9")
		require.ErrorContains(t, err, "give 1 to 255 hops")
	}
}

// TestTTLSecurityHops puts a router between a and b: r is one hop from b,
// a two. A listener on b that allows 1 hop takes r and refuses a; one that
// allows 2 takes both. IPv4 and IPv6.
func TestTTLSecurityHops(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	_, a, b, r := testnet.Routed(t)
	for _, v6 := range []bool{false, true} {
		server := b.Addr4
		if v6 {
			server = b.Addr6
		}
		for _, hops := range []int{1, 2} {
			if v6 && !server.IsValid() {
				t.Run("IPv6", func(t *testing.T) { requireIPv6(t) }) // says why the IPv6 half does not run
				break
			}
			var ln *tcpmd5.Listener
			require.NoError(t, b.Host.Do(func() error {
				var err error
				ln, err = (&tcpmd5.ListenConfig{TTLSecurity: hops, AllowUnsigned: true}).Listen(t.Context(), "tcp", ":0")
				return err
			}))
			serveEcho(t, ln)
			target := net.JoinHostPort(server.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
			for _, from := range []struct {
				name    string
				host    *testnet.Host
				refused bool
			}{{"router, 1 hop", r, false}, {"host behind the router, 2 hops", a.Host, hops < 2}} {
				t.Run(net.JoinHostPort(server.String(), "")+" "+strconv.Itoa(hops)+" hops, from "+from.name, func(t *testing.T) {
					before := nsCounters(t, b.Host)
					var c net.Conn
					err := from.host.Do(func() error {
						d := &tcpmd5.Dialer{TTLSecurity: hops}
						d.Timeout = mustConnect
						if from.refused {
							d.Timeout = refuseAfter
						}
						var err error
						c, err = d.Dial("tcp", target)
						return err
					})
					moved := before.Delta(nsCounters(t, b.Host), minTTLDrop)[minTTLDrop]
					if from.refused {
						requireRefused(t, c, err)
						assert.Positive(t, moved)
						return
					}
					require.NoError(t, err)
					defer c.Close()
					ping(t, c)
				})
			}
			ln.Close()
		}
	}
}

func nsCounters(t *testing.T, h *testnet.Host) netstat.Counters {
	t.Helper()
	var c netstat.Counters
	require.NoError(t, h.Do(func() error {
		var err error
		c, err = netstat.Read()
		return err
	}))
	return c
}

func setIPOpt(t *testing.T, c *net.TCPConn, level, opt, v int) {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }))
	require.NoError(t, serr)
}
