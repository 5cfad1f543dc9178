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
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// keyBytes is what the kernel charges to a socket's option memory for one
// key, sizeof(struct tcp_md5sig_key) on 64-bit 6.x kernels: 131072 bytes of
// net.core.optmem_max hold 963 keys.
const keyBytes = 136

// optmemMax reads net.core.optmem_max: the bytes of option memory that each
// socket's keys are charged to.
func optmemMax() (int, error) {
	b, err := os.ReadFile("/proc/sys/net/core/optmem_max")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// control runs f on the socket behind c, the one way this package touches
// a raw socket: f's error comes back as it is (f gives it its meaning), and
// the RawConn's own, such as a closed socket's, wrapped once.
func control[T any](c syscall.RawConn, f func(fd int) (T, error)) (T, error) {
	var v T
	var err error
	if cerr := c.Control(func(fd uintptr) { v, err = f(int(fd)) }); cerr != nil {
		return v, fmt.Errorf("tcpmd5: %w", cerr)
	}
	return v, err
}

// controlErr is control for an f that returns only an error.
func controlErr(c syscall.RawConn, f func(fd int) error) error {
	_, err := control(c, func(fd int) (struct{}, error) { return struct{}{}, f(fd) })
	return err
}

// applyKeys installs keys on the socket behind c, all of them or none.
func applyKeys(c syscall.RawConn, keys []Key) error { return applyKeysFamily(c, 0, keys) }

// applyKeysFamily is applyKeys on a socket of family, or of a family to
// read from the kernel if 0.
func applyKeysFamily(c syscall.RawConn, family int, keys []Key) error {
	if len(keys) == 0 {
		return nil
	}
	return controlErr(c, func(fd int) error { return setKeys(fd, family, keys) })
}

// installEach installs keys on the socket behind c, a socket made
// elsewhere, in order, and stops at the first the kernel refuses. It
// deletes none: an installed key may have replaced one whose secret the
// kernel cannot give back, and deleting it would leave that peer without
// a key. It returns how many it installed.
func installEach(c syscall.RawConn, keys []Key) (int, error) {
	return control(c, func(fd int) (int, error) {
		family, err := socketFamily(fd)
		if err != nil {
			return 0, err
		}
		return fdInstall(fd, family, keys)
	})
}

// setKey installs k on the socket behind c, whose address family the
// caller already knows: one setsockopt(2), as a live listener's SetKey costs.
func setKey(c syscall.RawConn, family int, k Key) error {
	return controlErr(c, func(fd int) error { return setsockopt(fd, family, k, false) })
}

// rawFamily reads the address family of the socket behind c.
func rawFamily(c syscall.RawConn) (int, error) { return control(c, socketFamily) }

// watchQueue returns a second descriptor of the listening socket behind c,
// for waitQueued: the net package cannot wait for a listener's readiness
// on its behalf (its RawConn has no Read). Closing the listener does not
// end the socket while this descriptor stays open: close both.
func watchQueue(c syscall.RawConn) (*os.File, error) {
	return control(c, func(fd int) (*os.File, error) {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("tcpmd5: a descriptor to wait on the listening socket: %w", os.NewSyscallError("fcntl", err))
		}
		return os.NewFile(uintptr(nfd), "listening socket"), nil // nonblocking, as the listener: the runtime polls it
	})
}

// waitQueued waits until the listening socket behind w (from watchQueue)
// has a connection in its accept queue and returns with mu read-locked, so
// that no key change runs between that moment and the accept(2) that
// follows; release unlocks it. It looks at the queue under the lock,
// because a key change may drain the queue between the wake-up and the
// lock.
func waitQueued(w syscall.RawConn, mu *sync.RWMutex) (release func(), err error) {
	err = w.Read(func(fd uintptr) bool {
		mu.RLock()
		if fdQueued(int(fd)) {
			return true
		}
		mu.RUnlock()
		return false
	})
	if err != nil {
		return nil, err
	}
	return mu.RUnlock, nil
}

// queued reports whether the listening socket behind c has a connection in
// its accept queue; false if that cannot be read.
func queued(c syscall.RawConn) bool {
	q, _ := control(c, func(fd int) (bool, error) { return fdQueued(fd), nil })
	return q
}

// fdQueued is queued on a file descriptor: poll(2) without waiting.
func fdQueued(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// md5Held reports whether connection c holds an MD5 key for peer on
// interface ifindex, the copy the kernel makes when it verified the
// handshake with a listener's key: deleting it succeeds, where a socket
// without one answers ENOENT. A deleted key is put back at once with
// secret, which must be the one the kernel copied; if that fails, c is
// left without a key and the error says so, and the caller must close c.
func md5Held(c syscall.RawConn, peer netip.Addr, ifindex int, secret []byte) (bool, error) {
	return control(c, func(fd int) (bool, error) {
		family, err := socketFamily(fd)
		if err != nil {
			return false, err
		}
		k := Key{Peer: netip.PrefixFrom(peer, peer.BitLen()), Ifindex: ifindex, Secret: secret}
		if err := setsockopt(fd, family, k, true); errors.Is(err, unix.ENOENT) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		return true, setsockopt(fd, family, k, false)
	})
}

// boundIfindex returns the interface the socket behind c is bound to
// (SO_BINDTOIFINDEX), or 0. A socket bound to a VRF device, and a
// connection accepted through one, report the VRF: the l3index against
// which the kernel matches interface keys.
func boundIfindex(c syscall.RawConn) (int, error) {
	return control(c, func(fd int) (int, error) {
		idx, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX)
		if err != nil {
			return 0, fmt.Errorf("tcpmd5: reading the socket's interface: %w", os.NewSyscallError("getsockopt", err))
		}
		return idx, nil
	})
}

// removeKey deletes the key for k.Peer and k.Ifindex from the socket behind
// c, whose address family the caller knows. A key that is not there is not
// an error.
func removeKey(c syscall.RawConn, family int, k Key) error {
	return controlErr(c, func(fd int) error {
		if err := setsockopt(fd, family, k, true); !errors.Is(err, unix.ENOENT) {
			return err
		}
		return nil
	})
}

// setKeys installs keys on fd, a socket of family (0: read it from the
// kernel); if one fails, it deletes those it installed.
func setKeys(fd, family int, keys []Key) error {
	if family == 0 {
		var err error
		if family, err = socketFamily(fd); err != nil {
			return err
		}
	}
	n, err := fdInstall(fd, family, keys)
	if err != nil {
		for _, done := range keys[:n] {
			_ = setsockopt(fd, family, done, true)
		}
	}
	return err
}

// fdInstall checks every key for fd, a socket of family, then installs
// them in order and stops at the first the kernel refuses. It returns how
// many it installed.
func fdInstall(fd, family int, keys []Key) (int, error) {
	for _, k := range keys {
		if _, _, err := md5sig(family, k, false); err != nil {
			return 0, err
		}
	}
	for i, k := range keys {
		if err := setsockopt(fd, family, k, false); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

// socketFamily reads the socket's address family from the kernel
// (SO_DOMAIN), which decides how peers are encoded.
func socketFamily(fd int) (int, error) {
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
func md5sig(family int, k Key, del bool) (*unix.TCPMD5Sig, int, error) {
	var sig unix.TCPMD5Sig
	full := k.Peer.Bits() == k.Peer.Addr().BitLen()
	if err := putPeer(family, k.Peer.Addr(), unsafe.Pointer(&sig.Addr)); err != nil {
		return nil, 0, fmt.Errorf("tcpmd5: key for %s: %w", k.peerString(), err)
	}
	opt := unix.TCP_MD5SIG
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
	return &sig, opt, nil
}

// putPeer writes peer as the sockaddr_in or sockaddr_in6 that a socket of
// family takes in a key's address field at dst: an IPv4 peer goes
// v4-mapped on an AF_INET6 socket.
func putPeer(family int, peer netip.Addr, dst unsafe.Pointer) error {
	switch {
	case family == unix.AF_INET && peer.Is4():
		sa := (*unix.RawSockaddrInet4)(dst)
		sa.Family = unix.AF_INET
		sa.Addr = peer.As4()
	case family == unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(dst)
		sa.Family = unix.AF_INET6
		sa.Addr = peer.As16()
	case family == unix.AF_INET:
		return errors.New("an IPv6 peer cannot be keyed on an IPv4 socket; use tcp6, or a dual-stack address such as [::]")
	default:
		return fmt.Errorf("address family %d is neither IPv4 nor IPv6", family)
	}
	return nil
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

// optmemFull says what a socket's full option memory (ENOMEM) holds.
func optmemFull() string {
	if n, err := optmemMax(); err == nil {
		return fmt.Sprintf("net.core.optmem_max is %d bytes, about %d MD5 keys", n, n/keyBytes)
	}
	return "net.core.optmem_max"
}

// setsockopt installs k on fd, or deletes it with del, and gives the kernel's
// error a meaning an operator can act on.
func setsockopt(fd, family int, k Key, del bool) error {
	sig, opt, err := md5sig(family, k, del)
	if err != nil {
		return err
	}
	if !del {
		if err := unreachableIPv4(fd, family, k.Peer.Addr()); err != nil {
			return fmt.Errorf("tcpmd5: key for %s: %w", k.peerString(), err)
		}
	}
	err = unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, opt, sig)
	clear(sig.Key[:])
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
	if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, opt, sig); errors.Is(err, unix.EINVAL) {
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
	if err := setsockopt(fd, unix.AF_INET, k, false); err != nil {
		return err
	}
	return setsockopt(fd, unix.AF_INET, k, true)
}

// applyTTLSecurity makes the socket behind c send with TTL and hop limit
// 255 and drop every segment that arrives with less than 256-hops (RFC 5082
// GTSM): IP_TTL and IP_MINTTL, plus IPV6_UNICAST_HOPS and IPV6_MINHOPCOUNT
// on an AF_INET6 socket, whose IPv4 peers (dual-stack) obey the IPv4 pair.
func applyTTLSecurity(c syscall.RawConn, hops int) error {
	if hops == 0 {
		return nil
	}
	return controlErr(c, func(fd int) error {
		family, err := socketFamily(fd)
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
	})
}
