//go:build !tcpmd5stub

package tcpmd5

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// optmemMax reads net.core.optmem_max: the bytes of option memory that each
// socket's keys are charged to.
func optmemMax() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/core/optmem_max")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// sockFamily reads the socket's address family from the kernel
// (SO_DOMAIN), which decides how peers are encoded.
func sockFamily(fd int) (int, error) {
	family, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, fmt.Errorf("tcpmd5: reading the socket family: %w", os.NewSyscallError("getsockopt", err))
	}
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return 0, fmt.Errorf("tcpmd5: the socket is not IPv4 or IPv6 (address family %d); TCP MD5 keys need a TCP socket", family)
	}
	return family, nil
}

// md5sig encodes k for a socket of the given family as the kernel's struct
// tcp_md5sig and returns it with the option name that takes it: TCP_MD5SIG
// for a host key on any interface, TCP_MD5SIG_EXT with flags otherwise. With
// del, the key length is 0, which tells the kernel to delete the key.
//
// An IPv4 peer on an AF_INET6 socket (a dual-stack listener) is encoded as a
// v4-mapped address (::ffff:a.b.c.d) with its IPv4 prefix length, the only
// form such a socket takes.
func md5sig(family int, k Key, del bool) (sig unix.TCPMD5Sig, opt int, err error) {
	full := k.Peer.Bits() == k.Peer.Addr().BitLen()
	if err := putPeer(family, k.Peer.Addr(), unsafe.Pointer(&sig.Addr)); err != nil {
		return sig, 0, fmt.Errorf("tcpmd5: key for %s: %w", k.peerString(), err)
	}
	opt = unix.TCP_MD5SIG
	if !full {
		opt = unix.TCP_MD5SIG_EXT
		sig.Flags |= unix.TCP_MD5SIG_FLAG_PREFIX
		sig.Prefixlen = uint8(k.Peer.Bits())
	}
	if k.Ifindex != 0 {
		opt = unix.TCP_MD5SIG_EXT
		sig.Flags |= unix.TCP_MD5SIG_FLAG_IFINDEX
		sig.Ifindex = int32(k.Ifindex)
	}
	if !del {
		sig.Keylen = uint16(copy(sig.Key[:], k.Secret))
	}
	return sig, opt, nil
}

// putPeer writes peer as the sockaddr_in or sockaddr_in6 that a socket of
// family takes in a key's address field at dst: an IPv4 peer goes
// v4-mapped on an AF_INET6 socket.
func putPeer(family int, peer netip.Addr, dst unsafe.Pointer) error {
	if err := peerFits(family, peer); err != nil {
		return err
	}
	if family == unix.AF_INET {
		sa := (*unix.RawSockaddrInet4)(dst)
		sa.Family = unix.AF_INET
		sa.Addr = peer.As4()
	} else {
		sa := (*unix.RawSockaddrInet6)(dst)
		sa.Family = unix.AF_INET6
		sa.Addr = peer.As16()
	}
	return nil
}

// peerFits fails if peer cannot be keyed on a socket of family: an IPv6
// peer on an IPv4 socket, or a family that is neither.
func peerFits(family int, peer netip.Addr) error {
	switch {
	case family == unix.AF_INET6, family == unix.AF_INET && peer.Is4():
		return nil
	case family == unix.AF_INET:
		return errors.New("an IPv6 peer cannot be keyed on an IPv4 socket; use tcp6, or a dual-stack address such as [::]")
	}
	return fmt.Errorf("address family %d is neither IPv4 nor IPv6", family)
}

// unreachableIPv4 reports an IPv4 peer keyed on an IPv6-only socket
// (tcp6): the kernel takes the v4-mapped key, but no IPv4 peer can ever
// use it.
func unreachableIPv4(fd, family int, peer netip.Addr) error {
	if family != unix.AF_INET6 || !peer.Is4() {
		return nil
	}
	if v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err == nil && v6only == 1 {
		return errors.New("the socket is IPv6-only (tcp6), so no IPv4 peer can reach it; listen or dial with tcp, or tcp4")
	}
	return nil
}

// md5Fits fails if k cannot go on a socket of family: an IPv6 peer on an
// IPv4 socket.
func md5Fits(family int, k Key) error {
	if err := peerFits(family, k.Peer.Addr()); err != nil {
		return fmt.Errorf("tcpmd5: key for %s: %w", k.peerString(), err)
	}
	return nil
}

// md5Add installs k on fd, a socket of family (setsockopt(2) TCP_MD5SIG or
// TCP_MD5SIG_EXT), replacing the key for the same peer and interface.
func md5Add(fd, family int, k Key) error {
	sig, opt, err := md5sig(family, k, false)
	if err != nil {
		return err
	}
	if err := unreachableIPv4(fd, family, k.Peer.Addr()); err != nil {
		return fmt.Errorf("tcpmd5: key for %s: %w", k.peerString(), err)
	}
	err = unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, opt, &sig)
	clear(sig.Key[:])
	return md5Error(fd, opt, k, err)
}

// md5Del deletes the key for k.Peer and k.Ifindex from fd, a socket of
// family, and reports whether there was one (ENOENT: none, no error).
func md5Del(fd, family int, k Key) (held bool, err error) {
	sig, opt, err := md5sig(family, k, true)
	if err != nil {
		return false, err
	}
	err = unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, opt, &sig)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return err == nil, md5Error(fd, opt, k, err)
}

// md5Error gives the kernel's answer to a key option, opt, on fd a meaning
// an operator can act on.
func md5Error(fd, opt int, k Key, err error) error {
	if err == nil {
		return nil
	}
	serr := os.NewSyscallError("setsockopt", err)
	peer := k.peerString()
	switch {
	case errors.Is(err, unix.ENOPROTOOPT), errors.Is(err, unix.EOPNOTSUPP):
		proto, perr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		switch {
		case perr == nil && proto == unix.IPPROTO_MPTCP:
			return fmt.Errorf("tcpmd5: key for %s: the socket is MPTCP, which takes no keys; call SetMultipathTCP(false): %w", peer, serr)
		case perr == nil && proto != unix.IPPROTO_TCP:
			return fmt.Errorf("tcpmd5: key for %s: the socket is not TCP (protocol %d): %w", peer, proto, serr)
		case opt == unix.TCP_MD5SIG_EXT:
			return fmt.Errorf("%w (key for %s: prefix and interface keys need TCP_MD5SIG_EXT, Linux 4.13+: %w)", ErrMD5Unsupported, peer, serr)
		}
		return fmt.Errorf("%w (key for %s: the kernel lacks CONFIG_TCP_MD5SIG or runs in a sandbox without it: %w)", ErrMD5Unsupported, peer, serr)
	case errors.Is(err, unix.ENOMEM):
		return fmt.Errorf("tcpmd5: key for %s: the socket's option memory is full (%s); raise it: %w", peer, optmemFull(), serr)
	case errors.Is(err, unix.EINVAL) && k.Ifindex != 0 && !interfaceExists(k.Ifindex):
		return fmt.Errorf("tcpmd5: key for %s: there is no interface with index %d in this network namespace: %w", peer, k.Ifindex, serr)
	case errors.Is(err, unix.EINVAL) && k.Ifindex != 0:
		return fmt.Errorf("tcpmd5: key for %s: interface %d is not a VRF (L3 master) device, the only kind a key takes: %w", peer, k.Ifindex, serr)
	case errors.Is(err, unix.EINVAL) && opt == unix.TCP_MD5SIG_EXT:
		return fmt.Errorf("tcpmd5: key for %s: the kernel refused a prefix key (TCP_MD5SIG_FLAG_PREFIX needs Linux 4.13+): %w", peer, serr)
	}
	return fmt.Errorf("tcpmd5: key for %s: %w", peer, serr)
}

// interfaceExists reports whether the calling thread's network namespace
// has an interface with index idx.
func interfaceExists(idx int) bool {
	_, err := net.InterfaceByIndex(idx)
	return err == nil
}

// vrfDevice fails if the interface with index idx is not a VRF (L3
// master) device, the only kind the kernel confines a key to: it asks the
// kernel, with an interface key on a throwaway socket, which refuses one
// for any other interface with EINVAL. Where the kernel takes no such key
// at all, it says nothing: installing the key will.
func vrfDevice(idx int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	k := Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), Ifindex: idx, Secret: []byte("tcpmd5-probe")}
	sig, opt, err := md5sig(unix.AF_INET, k, false)
	if err != nil {
		return nil
	}
	if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, opt, &sig); errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}

// probe installs and deletes a key on a throwaway socket.
func probe() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("tcpmd5: probe socket: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	k := Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: []byte("tcpmd5-probe")}
	if err := md5Add(fd, unix.AF_INET, k); err != nil {
		return err
	}
	_, err = md5Del(fd, unix.AF_INET, k)
	return err
}

// sockTTLSecurity makes fd send with TTL and hop limit 255 and drop every
// segment that arrives with less than 256-hops (RFC 5082 GTSM): IP_TTL and
// IP_MINTTL, plus IPV6_UNICAST_HOPS and IPV6_MINHOPCOUNT on an AF_INET6
// socket, whose IPv4 peers (dual-stack) obey the IPv4 pair.
func sockTTLSecurity(fd, hops int) error {
	family, err := sockFamily(fd)
	if err != nil {
		return err
	}
	type opt struct {
		level, name, value int
		label              string
	}
	opts := []opt{
		{unix.IPPROTO_IP, unix.IP_TTL, 255, "IP_TTL"},
		{unix.IPPROTO_IP, unix.IP_MINTTL, 256 - hops, "IP_MINTTL"},
	}
	if family == unix.AF_INET6 {
		opts = append(opts,
			opt{unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 255, "IPV6_UNICAST_HOPS"},
			opt{unix.IPPROTO_IPV6, unix.IPV6_MINHOPCOUNT, 256 - hops, "IPV6_MINHOPCOUNT"})
	}
	for _, o := range opts {
		serr := unix.SetsockoptInt(fd, o.level, o.name, o.value)
		if serr == nil {
			continue
		}
		sysErr := os.NewSyscallError("setsockopt "+o.label, serr)
		if errors.Is(serr, unix.ENOPROTOOPT) || errors.Is(serr, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w (%w)", ErrTTLSecurityUnsupported, sysErr)
		}
		return fmt.Errorf("tcpmd5: TTL security of %d hops: %w", hops, sysErr)
	}
	return nil
}

// sockIfindex returns the interface fd is bound to (SO_BINDTOIFINDEX), or
// 0. A socket bound to a VRF device, and a connection accepted through
// one, report the VRF: the l3index against which the kernel matches
// interface keys.
func sockIfindex(fd int) (int, error) {
	idx, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX)
	if err != nil {
		return 0, fmt.Errorf("tcpmd5: reading the socket's interface: %w", os.NewSyscallError("getsockopt", err))
	}
	return idx, nil
}

// sockQueued reports whether the listening socket fd has a connection in
// its accept queue: poll(2) without waiting.
func sockQueued(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}
