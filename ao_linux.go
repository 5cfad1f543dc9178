//go:build linux && !tcpmd5stub

package tcpmd5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The TCP-AO socket options (include/uapi/linux/tcp.h, Linux 6.7+), which
// x/sys does not define.
const (
	tcpAOAddKey  = 38 // struct tcp_ao_add
	tcpAODelKey  = 39 // struct tcp_ao_del
	tcpAOInfo    = 40 // struct tcp_ao_info_opt
	tcpAOGetKeys = 41 // struct tcp_ao_getsockopt
)

// sockaddrStorage is struct __kernel_sockaddr_storage: 128 bytes that hold a
// sockaddr_in or sockaddr_in6.
type sockaddrStorage [128]byte

// aoAddCmd is struct tcp_ao_add, 288 bytes.
type aoAddCmd struct {
	Addr      sockaddrStorage
	AlgName   [aoAlgNameLen]byte
	Ifindex   int32
	Flags     uint32 // set_current:1, set_rnext:1
	Reserved2 uint16
	Prefix    uint8
	SndID     uint8
	RcvID     uint8
	MACLen    uint8
	KeyFlags  uint8
	KeyLen    uint8
	Key       [MaxSecretLen]byte
}

// aoDelCmd is struct tcp_ao_del, 144 bytes.
type aoDelCmd struct {
	Addr       sockaddrStorage
	Ifindex    int32
	Flags      uint32 // set_current:1, set_rnext:1, del_async:1
	Reserved2  uint16
	Prefix     uint8
	SndID      uint8
	RcvID      uint8
	CurrentKey uint8
	RNext      uint8
	KeyFlags   uint8
}

// aoInfoOpt is struct tcp_ao_info_opt, 48 bytes.
type aoInfoOpt struct {
	Flags          uint32 // set_current:1, set_rnext:1, ao_required:1, set_counters:1, accept_icmps:1
	Reserved2      uint16
	CurrentKey     uint8
	RNext          uint8
	PktGood        uint64
	PktBad         uint64
	PktKeyNotFound uint64
	PktAORequired  uint64
	PktDroppedICMP uint64
}

// aoGetCmd is struct tcp_ao_getsockopt, 304 bytes.
type aoGetCmd struct {
	Addr     sockaddrStorage
	AlgName  [aoAlgNameLen]byte
	Key      [MaxSecretLen]byte
	NKeys    uint32
	Flags    uint16 // is_current:1, is_rnext:1, get_all:1
	SndID    uint8
	RcvID    uint8
	Prefix   uint8
	MACLen   uint8
	KeyFlags uint8
	KeyLen   uint8
	Ifindex  int32
	PktGood  uint64
	PktBad   uint64
}

// The bits of the structs' bitfields, counted from the first declared.
const (
	aoSetCurrent  = 0
	aoSetRNext    = 1
	aoRequired    = 2
	aoSetCounters = 3
	aoAcceptICMPs = 4
)

// The key flags (TCP_AO_KEYF_*).
const (
	aoKeyIfindex    = unix.TCP_AO_KEYF_IFINDEX
	aoKeyExcludeOpt = unix.TCP_AO_KEYF_EXCLUDE_OPT
)

// bigEndian: C bitfields start at the most significant bit there.
var bigEndian = binary.NativeEndian.Uint16([]byte{0, 1}) == 1

// bit returns bitfield bit n of a field of size bytes.
func bit(n, size int) uint32 {
	if bigEndian {
		return 1 << (size*8 - 1 - n)
	}
	return 1 << n
}

// aoAddr encodes k's peer for a socket of family, as putPeer does, and
// returns its prefix length: a host's full one, 32 for an IPv4 peer on an
// IPv6 socket.
func aoAddr(family int, k AOKey, sa *sockaddrStorage) (prefix uint8, err error) {
	if err := putPeer(family, k.Peer.Addr(), unsafe.Pointer(sa)); err != nil {
		return 0, fmt.Errorf("tcpmd5: AO key %s: %w", k.name(), err)
	}
	return uint8(k.Peer.Bits()), nil
}

func (k AOKey) keyFlags() uint8 {
	var f uint8
	if k.Ifindex != 0 {
		f |= aoKeyIfindex
	}
	if k.ExcludeOptions {
		f |= aoKeyExcludeOpt
	}
	return f
}

// aoAdd installs k, normalized, on fd, a socket of family; current and
// rnext make it the key the socket signs with and asks the peer for.
func aoAdd(fd, family int, k AOKey, current, rnext bool) error {
	var err error
	var cmd aoAddCmd
	if cmd.Prefix, err = aoAddr(family, k, &cmd.Addr); err != nil {
		return err
	}
	if err := unreachableIPv4(fd, family, k.Peer.Addr()); err != nil {
		return fmt.Errorf("tcpmd5: AO key %s: %w", k.name(), err)
	}
	copy(cmd.AlgName[:], k.Algorithm)
	cmd.Ifindex = int32(k.Ifindex)
	if current {
		cmd.Flags |= bit(aoSetCurrent, 4)
	}
	if rnext {
		cmd.Flags |= bit(aoSetRNext, 4)
	}
	cmd.SndID, cmd.RcvID, cmd.MACLen, cmd.KeyFlags = k.SendID, k.RecvID, uint8(k.MACLen), k.keyFlags()
	cmd.KeyLen = uint8(copy(cmd.Key[:], k.Secret))
	err = setsockoptPtr(fd, tcpAOAddKey, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
	clear(cmd.Key[:])
	return aoError(err, "adding AO key "+k.name())
}

// aoDel deletes the key of fd, a socket of family, that matches k's peer,
// KeyIDs and Ifindex.
func aoDel(fd, family int, k AOKey) error {
	var err error
	var cmd aoDelCmd
	if cmd.Prefix, err = aoAddr(family, k, &cmd.Addr); err != nil {
		return err
	}
	cmd.Ifindex = int32(k.Ifindex)
	cmd.SndID, cmd.RcvID, cmd.KeyFlags = k.SendID, k.RecvID, k.keyFlags()
	err = setsockoptPtr(fd, tcpAODelKey, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return aoError(err, "removing AO key "+k.name())
}

// aoInfo reads fd's TCP_AO_INFO. The kernel reads the buffer as input too
// and refuses stray flags, so it starts zeroed.
func aoInfo(fd int) (AOStats, error) {
	info, err := getAOInfo(fd)
	if err != nil {
		return AOStats{}, err
	}
	return AOStats{
		Current: info.CurrentKey, RNext: info.RNext,
		Required:    info.Flags&bit(aoRequired, 4) != 0,
		AcceptICMPs: info.Flags&bit(aoAcceptICMPs, 4) != 0,
		Good:        info.PktGood, Bad: info.PktBad, KeyNotFound: info.PktKeyNotFound,
		AORequired: info.PktAORequired, DroppedICMPs: info.PktDroppedICMP,
	}, nil
}

func getAOInfo(fd int) (aoInfoOpt, error) {
	var info aoInfoOpt
	size := uint32(unsafe.Sizeof(info))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, tcpAOInfo, uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return aoInfoOpt{}, aoError(os.NewSyscallError("getsockopt", errno), "reading TCP_AO_INFO")
	}
	return info, nil
}

// aoSetInfo sets fd's current key or RNext. TCP_AO_INFO writes ao_required
// and accept_icmps every time: they are read first and written back.
func aoSetInfo(fd int, setCurrent bool, current uint8, setRNext bool, rnext uint8) error {
	old, err := getAOInfo(fd)
	if err != nil {
		return err
	}
	var info aoInfoOpt
	info.Flags = old.Flags & (bit(aoRequired, 4) | bit(aoAcceptICMPs, 4))
	if setCurrent {
		info.Flags |= bit(aoSetCurrent, 4)
		info.CurrentKey = current
	}
	if setRNext {
		info.Flags |= bit(aoSetRNext, 4)
		info.RNext = rnext
	}
	err = setsockoptPtr(fd, tcpAOInfo, unsafe.Pointer(&info), unsafe.Sizeof(info))
	switch {
	case errors.Is(err, unix.ENOENT) && setCurrent:
		return fmt.Errorf("tcpmd5: no AO key with SendID %d on this connection: add it first: %w", current, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("tcpmd5: no AO key with RecvID %d on this connection: add it first: %w", rnext, err)
	}
	return aoError(err, "setting TCP_AO_INFO")
}

// setsockoptPtr is setsockopt(2) at IPPROTO_TCP with a struct of ours.
func setsockoptPtr(fd, opt int, p unsafe.Pointer, size uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, uintptr(opt), uintptr(p), size, 0)
	if errno != 0 {
		return os.NewSyscallError("setsockopt", errno)
	}
	return nil
}

// aoError gives the kernel's answer to a TCP-AO option a meaning.
func aoError(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOPROTOOPT):
		return fmt.Errorf("%w (the kernel has no TCP-AO: Linux 6.7+ with CONFIG_TCP_AO): %s: %w", ErrAOUnsupported, what, err)
	case errors.Is(err, unix.EKEYREJECTED):
		return fmt.Errorf("tcpmd5: %s: the socket holds an MD5 key for an overlapping peer; a peer is MD5 or AO, not both: %w", what, err)
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("tcpmd5: %s: an overlapping peer's key uses this SendID or RecvID; give each its own: %w", what, err)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("tcpmd5: %s: the kernel has no such algorithm (its crypto API lacks it): %w", what, err)
	case errors.Is(err, unix.ENOMEM):
		return fmt.Errorf("tcpmd5: %s: the socket's option memory is full (%s, fewer AO keys); raise it: %w", what, optmemFull(), err)
	case errors.Is(err, unix.EMSGSIZE):
		return fmt.Errorf("tcpmd5: %s: the MAC does not fit a SYN's option space: %w", what, err)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("tcpmd5: %s: the connection signs with it or asks for it; SetAORNext, SetAOCurrent first: %w", what, err)
	}
	return fmt.Errorf("tcpmd5: %s: %w", what, err)
}

var aoProbeOnce = sync.OnceValue(func() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return fmt.Errorf("tcpmd5: probing TCP-AO: %w", os.NewSyscallError("socket", err))
	}
	defer unix.Close(fd)
	// A zero struct: a kernel with TCP-AO refuses it (EINVAL), one
	// without it does not know the option (ENOPROTOOPT).
	var cmd aoAddCmd
	err = setsockoptPtr(fd, tcpAOAddKey, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
	if errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EOPNOTSUPP) {
		return aoError(os.NewSyscallError("setsockopt", unix.ENOPROTOOPT), "probing")
	}
	return nil
})

// aoChange adds k to fd, a socket of any family, or deletes it with del.
func aoChange(fd int, k AOKey, del bool) error {
	family, err := socketFamily(fd)
	if err != nil {
		return err
	}
	if del {
		return aoDel(fd, family, k)
	}
	return aoAdd(fd, family, k, false, false)
}

// connAO adds k to the socket behind c, or deletes it with del.
func connAO(c syscall.RawConn, k AOKey, del bool) error {
	return controlErr(c, func(fd int) error { return aoChange(fd, k, del) })
}

// connAOInfo is aoInfo on the socket behind c.
func connAOInfo(c syscall.RawConn) (AOStats, error) { return control(c, aoInfo) }

// connSetAOInfo is aoSetInfo on the socket behind c.
func connSetAOInfo(c syscall.RawConn, setCurrent bool, current uint8, setRNext bool, rnext uint8) error {
	return controlErr(c, func(fd int) error { return aoSetInfo(fd, setCurrent, current, setRNext, rnext) })
}

// applyAOKeys installs keys on the socket behind c, of family (0: read it
// from the kernel), all of them or none. With current, the first key
// becomes the one the socket signs with and asks the peer for.
func applyAOKeys(c syscall.RawConn, family int, keys []AOKey, current bool) error {
	if len(keys) == 0 {
		return nil
	}
	return controlErr(c, func(fd int) error {
		if family == 0 {
			var err error
			if family, err = socketFamily(fd); err != nil {
				return err
			}
		}
		for i, k := range keys {
			if err := aoAdd(fd, family, k, current && i == 0, current && i == 0); err != nil {
				for _, done := range keys[:i] {
					_ = aoDel(fd, family, done)
				}
				return err
			}
		}
		return nil
	})
}

// replaceAOKey installs k on the socket behind c, of family, deleting
// first the key with its Peer, KeyIDs and Ifindex if had (the kernel
// replaces no key in place). If the add fails, old goes back.
func replaceAOKey(c syscall.RawConn, family int, k, old AOKey, had bool) error {
	return controlErr(c, func(fd int) error {
		if had {
			if err := aoDel(fd, family, old); err != nil {
				return err
			}
		}
		if err := aoAdd(fd, family, k, false, false); err != nil {
			if had {
				_ = aoAdd(fd, family, old, false, false)
			}
			return err
		}
		return nil
	})
}

// removeAOKeyFrom deletes k from the socket behind c, of family.
func removeAOKeyFrom(c syscall.RawConn, family int, k AOKey) error {
	return controlErr(c, func(fd int) error { return aoDel(fd, family, k) })
}

// acceptedAO reports whether the connection behind c completed its
// handshake with TCP-AO: only then does the kernel give it AO state, which
// TCP_AO_INFO reads (ENOENT otherwise).
func acceptedAO(c syscall.RawConn) (bool, error) {
	return control(c, func(fd int) (bool, error) {
		_, err := getAOInfo(fd)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.ENOENT):
			return false, nil
		}
		return false, err
	})
}
