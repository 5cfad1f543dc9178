package tcpmd5

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
