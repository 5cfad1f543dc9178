package rawao

import (
	"encoding/binary"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket options and the offsets of struct tcp_ao_add (288 bytes) and
// struct tcp_ao_del (144 bytes).
const (
	optAdd, optDel = 38, 39

	addSize, addAlg, addFlags, addPrefix, addSndID, addRcvID, addMACLen, addKeyLen, addKey = 288, 128, 196, 202, 203, 204, 205, 207, 208
	delSize, delPrefix, delSndID, delRcvID                                                 = 144, 138, 139, 140

	optInfo                                 = 40
	infoSize, infoCurrent, infoRNext        = 48, 6, 7
	infoSetCurrent, infoSetRNext     uint32 = 1 << 0, 1 << 1 // bit fields, little-endian layout
	infoRequired, infoAcceptICMPs    uint32 = 1 << 2, 1 << 4
)

// Key is one master key tuple as the UAPI takes it.
type Key struct {
	Peer           netip.Prefix // an IPv4 peer on an IPv6 socket goes v4-mapped, with its IPv4 prefix
	SendID, RecvID uint8
	Algorithm      string
	MACLen         uint8 // 0: the kernel's default, 12
	Secret         []byte
}

// Add installs k on fd, a TCP socket of family (AF_INET or AF_INET6).
func Add(fd, family int, k Key) error { return add(fd, family, k, 0) }

// AddSigning is Add that also makes k current and asks the peer for it
// (set_current and set_rnext), on a connected socket.
func AddSigning(fd, family int, k Key) error {
	return add(fd, family, k, infoSetCurrent|infoSetRNext)
}

func add(fd, family int, k Key, flags uint32) error {
	b := make([]byte, addSize)
	binary.LittleEndian.PutUint32(b[addFlags:], flags)
	sockaddr(b, family, k.Peer.Addr())
	b[addPrefix], b[addSndID], b[addRcvID], b[addMACLen] = byte(k.Peer.Bits()), k.SendID, k.RecvID, k.MACLen
	copy(b[addAlg:addAlg+63], k.Algorithm)
	b[addKeyLen] = byte(copy(b[addKey:addKey+80], k.Secret))
	return setsockopt(fd, optAdd, b)
}

// Del deletes the key of fd for k's peer and KeyIDs.
func Del(fd, family int, k Key) error {
	b := make([]byte, delSize)
	sockaddr(b, family, k.Peer.Addr())
	b[delPrefix], b[delSndID], b[delRcvID] = byte(k.Peer.Bits()), k.SendID, k.RecvID
	return setsockopt(fd, optDel, b)
}

// SetCurrent makes fd sign with its key of SendID current (TCP_AO_INFO
// set_current), as a peer that switches on its own schedule does.
func SetCurrent(fd int, current uint8) error { return setInfo(fd, infoSetCurrent, current, 0) }

// SetRNext makes fd ask its peer for the key of RecvID rnext (TCP_AO_INFO
// set_rnext), as a router does when a key's send lifetime begins.
func SetRNext(fd int, rnext uint8) error { return setInfo(fd, infoSetRNext, 0, rnext) }

// SetSigning makes fd sign with its key of SendID current and ask for the
// key of RecvID rnext, in one TCP_AO_INFO write.
func SetSigning(fd int, current, rnext uint8) error {
	return setInfo(fd, infoSetCurrent|infoSetRNext, current, rnext)
}

// SetSigningKeepingFlags is SetSigning for a socket whose ao_required and
// accept_icmps someone else may have set: TCP_AO_INFO read first, its
// flags written back (the write sets them too).
func SetSigningKeepingFlags(fd int, current, rnext uint8) error {
	b := make([]byte, infoSize)
	size := uint32(len(b))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, optInfo, uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return os.NewSyscallError("getsockopt", errno)
	}
	keep := binary.LittleEndian.Uint32(b) & (infoRequired | infoAcceptICMPs)
	return setInfo(fd, keep|infoSetCurrent|infoSetRNext, current, rnext)
}

// setInfo writes TCP_AO_INFO with flags, leaving ao_required and
// accept_icmps off.
func setInfo(fd int, flags uint32, current, rnext uint8) error {
	b := make([]byte, infoSize)
	binary.LittleEndian.PutUint32(b, flags)
	b[infoCurrent], b[infoRNext] = current, rnext
	return setsockopt(fd, optInfo, b)
}

// sockaddr writes a sockaddr_in or sockaddr_in6 of a, port 0, at b.
func sockaddr(b []byte, family int, a netip.Addr) {
	binary.NativeEndian.PutUint16(b, uint16(family))
	if family == unix.AF_INET {
		a4 := a.As4()
		copy(b[4:8], a4[:])
		return
	}
	a16 := a.As16()
	copy(b[8:24], a16[:])
}

func setsockopt(fd, opt int, b []byte) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, uintptr(opt), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0)
	if errno != 0 {
		return os.NewSyscallError("setsockopt", errno)
	}
	return nil
}
