//go:build linux && !tcpmd5stub

package tcpmd5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
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
	bitSetCurrent  = 0
	bitSetRNext    = 1
	bitRequired    = 2
	bitSetCounters = 3
	bitAcceptICMPs = 4
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

// aoAdd installs k, normalized, on fd, a socket of family
// (setsockopt(2) TCP_AO_ADD_KEY).
func aoAdd(fd, family int, k AOKey) error { return aoAddFlags(fd, family, k, 0) }

// aoAddSigning is aoAdd that also makes k the key fd signs with and asks
// the peer for (set_current and set_rnext), as a socket about to dial needs.
func aoAddSigning(fd, family int, k AOKey) error {
	return aoAddFlags(fd, family, k, bit(bitSetCurrent, 4)|bit(bitSetRNext, 4))
}

// aoAddFlags is aoAdd with the command's flags.
func aoAddFlags(fd, family int, k AOKey, flags uint32) error {
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
	cmd.Flags = flags
	cmd.SndID, cmd.RcvID, cmd.MACLen, cmd.KeyFlags = k.SendID, k.RecvID, uint8(k.MACLen), k.keyFlags()
	cmd.KeyLen = uint8(copy(cmd.Key[:], k.Secret))
	err = setsockoptPtr(fd, tcpAOAddKey, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
	clear(cmd.Key[:])
	if err != nil { // the message is built only when there is one
		return aoError(err, "adding AO key "+k.name())
	}
	return nil
}

// aoDel deletes the key of fd, a socket of family, that matches k's peer,
// KeyIDs and Ifindex.
func aoDel(fd, family int, k AOKey) error { return aoDelCmdFor(fd, family, k, aoDelCmd{}) }

// aoDelSwitching is aoDel that, in the same call, makes fd sign with its
// key of SendID current and ask the peer for RecvID rnext (TCP_AO_DEL_KEY
// set_current and set_rnext): a connection's current key can go only so.
func aoDelSwitching(fd, family int, k AOKey, current, rnext uint8) error {
	return aoDelCmdFor(fd, family, k, aoDelCmd{Flags: bit(bitSetCurrent, 4) | bit(bitSetRNext, 4), CurrentKey: current, RNext: rnext})
}

// aoDelCmdFor sends cmd, with k's address, KeyIDs and Ifindex filled in.
func aoDelCmdFor(fd, family int, k AOKey, cmd aoDelCmd) error {
	var err error
	if cmd.Prefix, err = aoAddr(family, k, &cmd.Addr); err != nil {
		return err
	}
	cmd.Ifindex = int32(k.Ifindex)
	cmd.SndID, cmd.RcvID, cmd.KeyFlags = k.SendID, k.RecvID, k.keyFlags()
	err = setsockoptPtr(fd, tcpAODelKey, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return aoError(err, "removing AO key "+k.name())
}

// aoGetInfo reads fd's TCP_AO_INFO (getsockopt(2)); a socket without AO
// state answers ENOENT.
func aoGetInfo(fd int) (AOStats, error) {
	info, err := readAOInfo(fd)
	if err != nil {
		return AOStats{}, err
	}
	return AOStats{
		Current: info.CurrentKey, RNext: info.RNext,
		Required:    info.Flags&bit(bitRequired, 4) != 0,
		AcceptICMPs: info.Flags&bit(bitAcceptICMPs, 4) != 0,
		Good:        info.PktGood, Bad: info.PktBad, KeyNotFound: info.PktKeyNotFound,
		AORequired: info.PktAORequired, DroppedICMPs: info.PktDroppedICMP,
	}, nil
}

// aoKeyVerified returns how many segments from the peer fd's key k has
// verified (getsockopt(2) TCP_AO_GET_KEYS, the key's pkt_good): a peer
// that signs with k has sent that many.
func aoKeyVerified(fd, family int, k AOKey) (uint64, error) {
	var cmd aoGetCmd
	var err error
	if cmd.Prefix, err = aoAddr(family, k, &cmd.Addr); err != nil {
		return 0, err
	}
	cmd.NKeys, cmd.SndID, cmd.RcvID = 1, k.SendID, k.RecvID
	if k.Ifindex != 0 {
		cmd.KeyFlags, cmd.Ifindex = aoKeyIfindex, int32(k.Ifindex)
	}
	err = getsockoptPtr(fd, tcpAOGetKeys, unsafe.Pointer(&cmd), unsafe.Sizeof(cmd))
	clear(cmd.Key[:])
	switch {
	case err != nil:
		return 0, aoError(err, "reading AO key "+k.name())
	case cmd.NKeys == 0:
		return 0, fmt.Errorf("tcpmd5: reading AO key %s: the connection does not hold it", k.name())
	}
	return cmd.PktGood, nil
}

// readAOInfo is getsockopt(2) TCP_AO_INFO. The kernel reads the buffer as
// input too and refuses stray flags, so it starts zeroed.
func readAOInfo(fd int) (aoInfoOpt, error) {
	var info aoInfoOpt
	err := getsockoptPtr(fd, tcpAOInfo, unsafe.Pointer(&info), unsafe.Sizeof(info))
	switch {
	case errors.Is(err, unix.ENOENT):
		return aoInfoOpt{}, fmt.Errorf("tcpmd5: the connection has no TCP-AO state: %w", err)
	case err != nil:
		return aoInfoOpt{}, aoError(err, "reading TCP_AO_INFO")
	}
	return info, nil
}

// aoSetCurrent makes fd sign with its key of SendID sendID (TCP_AO_INFO
// set_current).
func aoSetCurrent(fd int, sendID uint8) error {
	err := writeAOInfo(fd, func(info *aoInfoOpt) {
		info.Flags |= bit(bitSetCurrent, 4)
		info.CurrentKey = sendID
	})
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("tcpmd5: no AO key with SendID %d on this connection: add it first: %w", sendID, err)
	}
	return err
}

// aoSetRNext makes fd ask the peer for its key of RecvID recvID
// (TCP_AO_INFO set_rnext).
func aoSetRNext(fd int, recvID uint8) error {
	err := writeAOInfo(fd, func(info *aoInfoOpt) {
		info.Flags |= bit(bitSetRNext, 4)
		info.RNext = recvID
	})
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("tcpmd5: no AO key with RecvID %d on this connection: add it first: %w", recvID, err)
	}
	return err
}

// aoSetSigning makes fd sign with its key of SendID sendID and ask the
// peer for RecvID recvID, in one TCP_AO_INFO set.
func aoSetSigning(fd int, sendID, recvID uint8) error {
	return writeAOInfo(fd, func(info *aoInfoOpt) {
		info.Flags |= bit(bitSetCurrent, 4) | bit(bitSetRNext, 4)
		info.CurrentKey, info.RNext = sendID, recvID
	})
}

// writeAOInfo sets fd's TCP_AO_INFO to what set writes. The option writes
// ao_required and accept_icmps every time: they are read first and
// written back.
func writeAOInfo(fd int, set func(*aoInfoOpt)) error {
	old, err := readAOInfo(fd)
	if err != nil {
		return err
	}
	var info aoInfoOpt
	info.Flags = old.Flags & (bit(bitRequired, 4) | bit(bitAcceptICMPs, 4))
	set(&info)
	err = setsockoptPtr(fd, tcpAOInfo, unsafe.Pointer(&info), unsafe.Sizeof(info))
	if errors.Is(err, unix.ENOENT) {
		return err
	}
	return aoError(err, "setting TCP_AO_INFO")
}

// getsockoptPtr is getsockopt(2) of the IPPROTO_TCP option opt into the
// size bytes at p, which the kernel may read as input too.
func getsockoptPtr(fd, opt int, p unsafe.Pointer, size uintptr) error {
	n := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return os.NewSyscallError("getsockopt", errno)
	}
	return nil
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
