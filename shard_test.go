package tcpmd5

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/bpf"
)

// TestSteeringProgramInVM runs the exact steering program, with the IP
// header at offset 0 instead of SKF_NET_OFF, on crafted IPv4 and IPv6
// headers in x/net/bpf's virtual machine: for every group size around the
// powers of two and many source addresses it returns the socket shardOf
// names, which is where the Listener put the peer's key. An IPv4 peer of a
// dual-stack socket arrives with an IPv4 header and its key is kept
// unmapped, so the IPv4 case covers it.
func TestSteeringProgramInVM(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("::ffff:192.0.2.1").Unmap()}
	for range 300 {
		var v4 [4]byte
		var v6 [16]byte
		for i := range v4 {
			v4[i] = byte(r.Uint32())
		}
		for i := range v6 {
			v6[i] = byte(r.Uint32())
		}
		addrs = append(addrs, netip.AddrFrom4(v4), netip.AddrFrom16(v6))
	}
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1000, maxShards} {
		vm, err := bpf.NewVM(steeringProgram(n, 0))
		require.NoError(t, err)
		for _, a := range addrs {
			got, err := vm.Run(ipHeader(a))
			require.NoError(t, err)
			require.Equal(t, shardOf(peerHash(a), n), got, "%d sockets, source %s", n, a)
		}
	}
}

// ipHeader returns an IP header, without options, from source a.
func ipHeader(a netip.Addr) []byte {
	if a.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45 // version 4, 5 words
		src := a.As4()
		copy(h[12:], src[:])
		return h
	}
	h := make([]byte, 40)
	h[0] = 0x60 // version 6
	src := a.As16()
	copy(h[8:], src[:])
	return h
}
