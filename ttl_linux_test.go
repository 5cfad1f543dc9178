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
)

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
			moved := before.Delta(counters(t), netstat.MinTTLDrop)[netstat.MinTTLDrop]
			if tt.dropped {
				requireRefused(t, c, err)
				assert.Positive(t, moved, "%s did not move", netstat.MinTTLDrop)
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
	assert.Positive(t, before.Delta(counters(t), netstat.MinTTLDrop)[netstat.MinTTLDrop])

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

func setIPOpt(t *testing.T, c *net.TCPConn, level, opt, v int) {
	t.Helper()
	rc, err := c.SyscallConn()
	require.NoError(t, err)
	var serr error
	require.NoError(t, rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }))
	require.NoError(t, serr)
}
