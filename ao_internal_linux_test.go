//go:build linux && !tcpmd5stub

package tcpmd5

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestAOLayouts pins our TCP-AO structs to the kernel's
// (include/uapi/linux/tcp.h, Linux 6.7+): sizes and the offset of every
// field after the address.
func TestAOLayouts(t *testing.T) {
	var add aoAddCmd
	var del aoDelCmd
	var info aoInfoOpt
	var get aoGetCmd
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct tcp_ao_add)", unsafe.Sizeof(add), 288},
		{"tcp_ao_add.alg_name", unsafe.Offsetof(add.AlgName), 128},
		{"tcp_ao_add.ifindex", unsafe.Offsetof(add.Ifindex), 192},
		{"tcp_ao_add.set_current", unsafe.Offsetof(add.Flags), 196},
		{"tcp_ao_add.reserved2", unsafe.Offsetof(add.Reserved2), 200},
		{"tcp_ao_add.prefix", unsafe.Offsetof(add.Prefix), 202},
		{"tcp_ao_add.sndid", unsafe.Offsetof(add.SndID), 203},
		{"tcp_ao_add.rcvid", unsafe.Offsetof(add.RcvID), 204},
		{"tcp_ao_add.maclen", unsafe.Offsetof(add.MACLen), 205},
		{"tcp_ao_add.keyflags", unsafe.Offsetof(add.KeyFlags), 206},
		{"tcp_ao_add.keylen", unsafe.Offsetof(add.KeyLen), 207},
		{"tcp_ao_add.key", unsafe.Offsetof(add.Key), 208},
		{"sizeof(struct tcp_ao_del)", unsafe.Sizeof(del), 144},
		{"tcp_ao_del.ifindex", unsafe.Offsetof(del.Ifindex), 128},
		{"tcp_ao_del.set_current", unsafe.Offsetof(del.Flags), 132},
		{"tcp_ao_del.reserved2", unsafe.Offsetof(del.Reserved2), 136},
		{"tcp_ao_del.prefix", unsafe.Offsetof(del.Prefix), 138},
		{"tcp_ao_del.sndid", unsafe.Offsetof(del.SndID), 139},
		{"tcp_ao_del.rcvid", unsafe.Offsetof(del.RcvID), 140},
		{"tcp_ao_del.current_key", unsafe.Offsetof(del.CurrentKey), 141},
		{"tcp_ao_del.rnext", unsafe.Offsetof(del.RNext), 142},
		{"tcp_ao_del.keyflags", unsafe.Offsetof(del.KeyFlags), 143},
		{"sizeof(struct tcp_ao_info_opt)", unsafe.Sizeof(info), 48},
		{"tcp_ao_info_opt.reserved2", unsafe.Offsetof(info.Reserved2), 4},
		{"tcp_ao_info_opt.current_key", unsafe.Offsetof(info.CurrentKey), 6},
		{"tcp_ao_info_opt.rnext", unsafe.Offsetof(info.RNext), 7},
		{"tcp_ao_info_opt.pkt_good", unsafe.Offsetof(info.PktGood), 8},
		{"tcp_ao_info_opt.pkt_bad", unsafe.Offsetof(info.PktBad), 16},
		{"tcp_ao_info_opt.pkt_key_not_found", unsafe.Offsetof(info.PktKeyNotFound), 24},
		{"tcp_ao_info_opt.pkt_ao_required", unsafe.Offsetof(info.PktAORequired), 32},
		{"tcp_ao_info_opt.pkt_dropped_icmp", unsafe.Offsetof(info.PktDroppedICMP), 40},
		{"sizeof(struct tcp_ao_getsockopt)", unsafe.Sizeof(get), 304},
		{"tcp_ao_getsockopt.alg_name", unsafe.Offsetof(get.AlgName), 128},
		{"tcp_ao_getsockopt.key", unsafe.Offsetof(get.Key), 192},
		{"tcp_ao_getsockopt.nkeys", unsafe.Offsetof(get.NKeys), 272},
		{"tcp_ao_getsockopt.is_current", unsafe.Offsetof(get.Flags), 276},
		{"tcp_ao_getsockopt.sndid", unsafe.Offsetof(get.SndID), 278},
		{"tcp_ao_getsockopt.rcvid", unsafe.Offsetof(get.RcvID), 279},
		{"tcp_ao_getsockopt.prefix", unsafe.Offsetof(get.Prefix), 280},
		{"tcp_ao_getsockopt.maclen", unsafe.Offsetof(get.MACLen), 281},
		{"tcp_ao_getsockopt.keyflags", unsafe.Offsetof(get.KeyFlags), 282},
		{"tcp_ao_getsockopt.keylen", unsafe.Offsetof(get.KeyLen), 283},
		{"tcp_ao_getsockopt.ifindex", unsafe.Offsetof(get.Ifindex), 284},
		{"tcp_ao_getsockopt.pkt_good", unsafe.Offsetof(get.PktGood), 288},
		{"tcp_ao_getsockopt.pkt_bad", unsafe.Offsetof(get.PktBad), 296},
		{"sizeof(struct __kernel_sockaddr_storage)", unsafe.Sizeof(add.Addr), 128},
	} {
		assert.Equal(t, c.want, c.got, c.name)
	}
	for _, size := range []uintptr{unsafe.Sizeof(add), unsafe.Sizeof(del), unsafe.Sizeof(info), unsafe.Sizeof(get)} {
		assert.Zero(t, size%8, "the kernel's structs are aligned(8): their sizes are multiples of 8")
	}
}

// aoTestKey is a host key for peer with KeyIDs send and recv.
func aoTestKey(peer string, send, recv uint8) AOKey {
	a := netip.MustParseAddr(peer)
	return AOKey{Peer: netip.PrefixFrom(a, a.BitLen()), SendID: send, RecvID: recv, Algorithm: "hmac(sha1)", MACLen: 12, Secret: []byte("fake-ao-fact-secret")}
}

// rawTCP returns a new TCP socket of family, closed when t ends.
func rawTCP(t *testing.T, family int) int {
	t.Helper()
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestAOKernelFacts checks what the kernel takes and refuses, as DESIGN.md
// lists it, with our own encodings: each is a rule the package relies on.
func TestAOKernelFacts(t *testing.T) {
	testenv.Require(t, testenv.AO)
	t.Run("an IPv6 socket takes an IPv4 peer v4-mapped, with prefix 32", func(t *testing.T) {
		fd := rawTCP(t, unix.AF_INET6)
		require.NoError(t, aoAdd(fd, unix.AF_INET6, aoTestKey("127.0.0.2", 1, 1)))
		var cmd aoAddCmd
		k := aoTestKey("127.0.0.3", 1, 1)
		_, err := aoAddr(unix.AF_INET6, k, &cmd.Addr)
		require.NoError(t, err)
		cmd.Prefix = 128 // what a v4-mapped host would be in IPv6 terms
		copy(cmd.AlgName[:], k.Algorithm)
		cmd.SndID, cmd.RcvID, cmd.KeyLen = 1, 1, uint8(copy(cmd.Key[:], k.Secret))
		err = setsockoptPtr(fd, tcpAOAddKey, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
		require.ErrorIs(t, err, unix.EINVAL)
	})
	t.Run("a key sharing only its SendID with an overlapping one is EEXIST", func(t *testing.T) {
		fd := rawTCP(t, unix.AF_INET)
		require.NoError(t, aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 1, 1)))
		err := aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 1, 2))
		require.ErrorIs(t, err, unix.EEXIST)
		assert.Contains(t, err.Error(), "give each its own")
		wide := aoTestKey("127.0.0.0", 2, 1)
		wide.Peer = netip.MustParsePrefix("127.0.0.0/24")
		require.ErrorIs(t, aoAdd(fd, unix.AF_INET, wide), unix.EEXIST, "a /24 over an existing /32 too")
		require.NoError(t, aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 2, 2)), "other KeyIDs both ways are fine")
	})
	t.Run("MD5 and AO keys for overlapping peers are EKEYREJECTED either way", func(t *testing.T) {
		fd := rawTCP(t, unix.AF_INET)
		require.NoError(t, aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 1, 1)))
		require.ErrorIs(t, md5Add(fd, unix.AF_INET, Key{Peer: netip.MustParsePrefix("127.0.0.2/32"), Secret: []byte("fake")}), unix.EKEYREJECTED)
		fd = rawTCP(t, unix.AF_INET)
		require.NoError(t, md5Add(fd, unix.AF_INET, Key{Peer: netip.MustParsePrefix("127.0.0.0/24"), Secret: []byte("fake")}))
		err := aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 1, 1))
		require.ErrorIs(t, err, unix.EKEYREJECTED)
		assert.Contains(t, err.Error(), "a peer is MD5 or AO, not both")
	})
	t.Run("set_current is EINVAL on a listening socket", func(t *testing.T) {
		fd := rawTCP(t, unix.AF_INET)
		require.NoError(t, aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 1, 1)))
		require.NoError(t, unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
		require.NoError(t, unix.Listen(fd, 1))
		require.ErrorIs(t, aoSetCurrent(fd, 1), unix.EINVAL)
	})
	t.Run("getsockopt TCP_AO_INFO reads its buffer and refuses reserved bits", func(t *testing.T) {
		fd := rawTCP(t, unix.AF_INET)
		require.NoError(t, aoAdd(fd, unix.AF_INET, aoTestKey("127.0.0.2", 1, 1)))
		info := aoInfoOpt{Flags: bit(7, 4)} // a reserved bit, as stale memory would have
		require.ErrorIs(t, getsockoptPtr(fd, tcpAOInfo, unsafe.Pointer(&info), unsafe.Sizeof(info)), unix.EINVAL)
		_, err := aoGetInfo(fd) // ours zeroes it
		require.NoError(t, err)
	})
	t.Run("without AO keys a socket has no AO state", func(t *testing.T) {
		_, err := aoGetInfo(rawTCP(t, unix.AF_INET))
		require.ErrorIs(t, err, unix.ENOENT)
	})
	t.Run("a MAC longer than a SYN holds is refused", func(t *testing.T) {
		k := aoTestKey("127.0.0.2", 1, 1)
		k.Algorithm, k.MACLen = "hmac(sha256)", 20
		require.ErrorIs(t, aoAdd(rawTCP(t, unix.AF_INET), unix.AF_INET, k), unix.EMSGSIZE)
		k.MACLen = MaxAOMACLen
		require.NoError(t, aoAdd(rawTCP(t, unix.AF_INET), unix.AF_INET, k), "the longest MAC we allow is one the kernel takes")
	})
	t.Run("an algorithm the kernel lacks", func(t *testing.T) {
		k := aoTestKey("127.0.0.2", 1, 1)
		k.Algorithm = "hmac(md4)"
		err := aoAdd(rawTCP(t, unix.AF_INET), unix.AF_INET, k)
		require.Error(t, err)
		assert.NotContains(t, err.Error(), "fake-ao-fact-secret")
	})
}

// dialAO dials addr from src with TCP-AO, signing with k.
func dialAO(t *testing.T, src, addr string, k AOKey) net.Conn {
	t.Helper()
	d := keyedDialer(netip.MustParseAddr(src), nil)
	d.AllowUnsigned, d.AOKeys = false, []AOKey{k}
	return dialWith(t, d, addr)
}

// TestAOReplaceJudgesTheGap: the kernel replaces no AO key in place, so
// SetAOKey deletes the old key, then adds the new one. An unsigned
// handshake from the key's peer that completes between the two is refused,
// as one a key covers, though the socket's table covers the peer
// throughout; an AO peer with the new key is handed over after it.
func TestAOReplaceJudgesTheGap(t *testing.T) {
	testenv.Require(t, testenv.AO)
	testenv.Netns(t)
	const peer = "127.0.61.9"
	old := aoTestKey(peer, 1, 2)
	var refused refusals
	l, err := (&ListenConfig{AOKeys: []AOKey{old}, OnRefuse: refused.add}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()

	var unsigned net.Conn
	l.replacing = func() {
		unsigned = dialFrom(t, peer, l.Addr().String(), nil)
		require.Eventually(t, func() bool { return queued(l.first.rc) }, 10*time.Second, time.Millisecond,
			"the unsigned handshake completes while no key covers the peer")
	}
	k := old
	k.Secret = []byte("fake-ao-gap-secret-2")
	require.NoError(t, l.SetAOKey(k))
	l.replacing = nil
	require.NotNil(t, unsigned, "SetAOKey replaced the key")
	requireRefused(t, l, &refused, unsigned, RefusedKeyAdded)

	mirror := aoTestKey("127.0.0.1", 2, 1)
	mirror.Secret = k.Secret
	requireHandedOver(t, l, dialAO(t, peer, l.Addr().String(), mirror))
}

// TestAOChangeOutOfDescriptors: a SetAOKey that cannot take the connection
// waiting on its socket (out of descriptors) keeps its key, and Accept
// asks each connection of that socket for its AO state until a later
// change has judged the queue: the unsigned connection that completed
// before the key, whose peer the socket's table now covers, is refused;
// an AO peer with the key is handed over. It runs in a child of the test
// binary, whose descriptor limit it lowers.
func TestAOChangeOutOfDescriptors(t *testing.T) {
	if !inDescriptorChild(t, testenv.AO, "TCPMD5_AO_DRAIN_CHILD", "Accept asked the kernel") {
		return
	}
	const peer = "127.0.62.9"
	other := aoTestKey("127.0.62.1", 1, 2)
	var refused refusals
	l, err := (&ListenConfig{AOKeys: []AOKey{other}, OnRefuse: refused.add}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()

	unsigned := dialFrom(t, peer, l.Addr().String(), nil)
	require.Eventually(t, func() bool { return queued(l.first.rc) }, 10*time.Second, time.Millisecond)
	fill, err := testenv.FillDescriptors()
	require.NoError(t, err)
	err = l.SetAOKey(aoTestKey(peer, 1, 2))
	for _, f := range fill {
		f.Close()
	}
	require.NoError(t, err, "the key is installed; only its queue waits")
	require.True(t, queued(l.first.rc), "the unsigned connection still waits")
	require.True(t, l.first.askAO, "Accept asks on the socket whose queue waits")
	requireRefused(t, l, &refused, unsigned, RefusedKeyAdded)
	requireHandedOver(t, l, dialAO(t, peer, l.Addr().String(), aoTestKey("127.0.0.1", 2, 1)))

	require.NoError(t, l.RemoveAOKey(other))
	assert.False(t, l.first.askAO, "a change whose drain took the queue ends the asking")
	t.Log("Accept asked the kernel")
}
