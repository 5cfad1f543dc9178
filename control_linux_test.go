//go:build !tcpmd5stub

package tcpmd5

import (
	"net/netip"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// decode is md5sig's inverse: the key a struct tcp_md5sig describes.
func decode(t *testing.T, sig *unix.TCPMD5Sig, opt int) Key {
	t.Helper()
	var addr netip.Addr
	switch sig.Addr.Family {
	case unix.AF_INET:
		addr = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(&sig.Addr)).Addr)
	case unix.AF_INET6:
		addr = netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(&sig.Addr)).Addr)
	default:
		t.Fatalf("family %d", sig.Addr.Family)
	}
	bits := addr.BitLen()
	if addr.Is4In6() {
		addr, bits = addr.Unmap(), 32
	}
	if sig.Flags&unix.TCP_MD5SIG_FLAG_PREFIX != 0 {
		require.Equal(t, unix.TCP_MD5SIG_EXT, opt, "flags need TCP_MD5SIG_EXT")
		bits = int(sig.Prefixlen)
	}
	k := Key{Peer: netip.PrefixFrom(addr, bits), Secret: append([]byte(nil), sig.Key[:sig.Keylen]...)}
	if sig.Flags&unix.TCP_MD5SIG_FLAG_IFINDEX != 0 {
		require.Equal(t, unix.TCP_MD5SIG_EXT, opt, "flags need TCP_MD5SIG_EXT")
		k.Ifindex = int(sig.Ifindex)
	} else {
		require.Zero(t, sig.Ifindex)
	}
	if sig.Flags == 0 {
		require.Equal(t, unix.TCP_MD5SIG, opt, "a host key on any interface takes plain TCP_MD5SIG")
	}
	return k
}

func FuzzSockaddr(f *testing.F) {
	f.Add([]byte{192, 0, 2, 1}, 32, 0, "fake-secret", true)
	f.Add([]byte{192, 0, 2, 0}, 24, 0, "fake-secret", false)
	f.Add(netip.MustParseAddr("2001:db8::").AsSlice(), 64, 0, "fake-secret", true)
	f.Add(netip.MustParseAddr("fe80::1").AsSlice(), 128, 7, "k", true)
	f.Add([]byte{0, 0, 0, 0}, 0, 0, "fake-secret", true)
	f.Fuzz(func(t *testing.T, ip []byte, bits, ifindex int, secret string, dualStack bool) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		p, err := addr.Prefix(bits)
		if err != nil || p.Bits() != bits {
			return
		}
		k, err := Key{Peer: p, Secret: []byte(secret), Ifindex: ifindex}.normalize()
		if err != nil {
			return
		}
		family := unix.AF_INET
		if dualStack || k.Peer.Addr().Is6() {
			family = unix.AF_INET6
		}
		sig, opt, err := md5sig(family, k, false)
		require.NoError(t, err)
		require.Equal(t, family, int(sig.Addr.Family))
		require.Equal(t, k, decode(t, &sig, opt))
		if family == unix.AF_INET6 && k.Peer.Addr().Is4() {
			require.True(t, netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(&sig.Addr)).Addr).Is4In6(), "IPv4 peers on AF_INET6 sockets go in v4-mapped")
		}

		del, delOpt, err := md5sig(family, k, true)
		require.NoError(t, err)
		require.Zero(t, del.Keylen, "keylen 0 deletes")
		require.Equal(t, opt, delOpt, "a delete must name the key as it was set")
		require.Equal(t, k.id(), decode(t, &del, delOpt).id())

		if k.Peer.Addr().Is6() {
			_, _, err := md5sig(unix.AF_INET, k, false)
			require.ErrorContains(t, err, "an IPv6 peer cannot be keyed on an IPv4 socket")
		}
	})
}
