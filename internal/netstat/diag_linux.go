package netstat

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sizes of the kernel's struct inet_diag_req_v2 and struct inet_diag_msg
// (linux/inet_diag.h), which x/sys does not define.
const (
	sizeofDiagReq = 56
	sizeofDiagMsg = 72
	tcpListen     = 10 // TCP_LISTEN
)

// Listening counts the TCP sockets listening on addr in the calling
// thread's network namespace, asked of the kernel through sock_diag(7)
// (NETLINK_SOCK_DIAG), which walks only the listening sockets of addr's
// port: the count costs the same however many other sockets the host has.
// It needs no privilege. An IPv6 addr counts AF_INET6 sockets, a v4-mapped
// one among them for a dual-stack socket bound to an IPv4 address.
func Listening(addr netip.AddrPort) (int, error) {
	family := unix.AF_INET6
	if addr.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.NLMSG_HDRLEN+sizeofDiagReq)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[unix.NLMSG_HDRLEN:]
	r[0], r[1] = byte(family), unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpListen)
	binary.BigEndian.PutUint16(r[8:], addr.Port()) // the kernel skips listeners of other ports
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, os.NewSyscallError("sendto", err)
	}
	want := addr.Addr().As16()
	buf := make([]byte, 1<<16)
	n := 0
	for {
		size, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, os.NewSyscallError("recvfrom", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:size])
		if err != nil {
			return 0, fmt.Errorf("sock_diag: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return n, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return 0, fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				return n, nil
			}
			if len(m.Data) < sizeofDiagMsg {
				continue
			}
			d := m.Data
			if d[1] != tcpListen || binary.BigEndian.Uint16(d[4:]) != addr.Port() {
				continue
			}
			var src [16]byte
			if family == unix.AF_INET {
				copy(src[12:], d[8:12])
				src[10], src[11] = 0xff, 0xff
			} else {
				copy(src[:], d[8:24])
			}
			if family == unix.AF_INET && netip.AddrFrom16(src).Unmap() == addr.Addr() || family == unix.AF_INET6 && src == want {
				n++
			}
		}
	}
}
