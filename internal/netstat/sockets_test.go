package netstat_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/netstat"
)

// hostWords writes a's bytes as /proc/net/tcp does: 32-bit words in host
// order, in hexadecimal.
func hostWords(a netip.Addr) string {
	raw := a.AsSlice()
	var b strings.Builder
	for i := 0; i < len(raw); i += 4 {
		fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(raw[i:]))
	}
	return b.String()
}

func TestParseSockets(t *testing.T) {
	t.Parallel()
	v4 := netip.MustParseAddr("127.0.0.1")
	v6 := netip.MustParseAddr("2001:db8::1")
	mapped := netip.MustParseAddr("::ffff:192.0.2.1")
	in := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: " + hostWords(v4) + ":1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n" +
		"   1: " + hostWords(v6) + ":00B3 " + hostWords(mapped) + ":C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n"
	socks, err := netstat.ParseSockets(strings.NewReader(in))
	require.NoError(t, err)
	require.Len(t, socks, 2)
	assert.Equal(t, netip.AddrPortFrom(v4, 8080), socks[0].Local)
	assert.Equal(t, netstat.StateListen, socks[0].State)
	assert.Equal(t, netip.AddrPortFrom(v6, 179), socks[1].Local)
	assert.Equal(t, netip.AddrPortFrom(mapped, 50000), socks[1].Remote, "a v4-mapped address stays 16 bytes")
	assert.Equal(t, netstat.StateEstablished, socks[1].State)
	assert.Equal(t, 1, netstat.Count(socks, 8080, netstat.StateListen))
	assert.Zero(t, netstat.Count(socks, 179, netstat.StateListen))

	for _, bad := range []string{"0: 0100007F 00000000:0000 0A\n", "0: 0100007Z:0050 00000000:0000 0A\n", "0: 0100007F:0050 00000000:0000 ZZ\n", "0: 0100007F:0050\n"} {
		_, err := netstat.ParseSockets(strings.NewReader(bad))
		assert.Error(t, err, bad)
	}
}

// TestSockets finds a listener of its own in this namespace's tables.
func TestSockets(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	socks, err := netstat.Sockets()
	require.NoError(t, err)
	want := ln.Addr().(*net.TCPAddr).AddrPort()
	assert.Equal(t, 1, netstat.Count(socks, int(want.Port()), netstat.StateListen))
	assert.Contains(t, socks, netstat.Socket{Local: want, Remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), State: netstat.StateListen})
}
