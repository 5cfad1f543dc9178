//go:build !tcpmd5stub

package tcpmd5

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/netstat"
)

// skfNetOff is SKF_NET_OFF of linux/filter.h: a classic BPF load from
// skfNetOff+k reads byte k of the IP header, wherever the packet data starts.
// A reuseport program runs with the data past the TCP header, so the source
// address is reachable only this way.
const skfNetOff = -0x100000

// sockFDTable makes the process's descriptor table hold descriptor want
// (at most RLIMIT_NOFILE's), by duplicating fd there and closing the copy.
// The kernel grows the table by doubling, and in a threaded process waits
// an RCU grace period (milliseconds) to do it: the caller pays that wait
// here instead of whoever opens the first descriptor past the table.
func sockFDTable(fd, want int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return os.NewSyscallError("getrlimit", err)
	}
	if uint64(want) > lim.Cur {
		want = int(lim.Cur)
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, want-1)
	if err != nil {
		return os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", err)
	}
	return unix.Close(dup)
}

// sockReusePort sets SO_REUSEPORT on fd before bind(2), so that the
// listener can later add sockets bound to the same address.
func sockReusePort(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("tcpmd5: joining a reuseport group: %w", os.NewSyscallError("setsockopt", err))
	}
	return nil
}

// sockInherited reads what adopting fd, a socket made elsewhere, as a
// listener needs: it must listen (SO_ACCEPTCONN) and be plain TCP, not
// MPTCP (SO_PROTOCOL), and whether it is IPv6-only and bound with
// SO_REUSEPORT decides how its group grows.
func sockInherited(fd int) (inherited, error) {
	get := func(level, opt int, what string) (int, error) {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil {
			return 0, fmt.Errorf("tcpmd5: reading the inherited socket's %s: %w", what, os.NewSyscallError("getsockopt", err))
		}
		return v, nil
	}
	var in inherited
	if v, err := get(unix.SOL_SOCKET, unix.SO_ACCEPTCONN, "state"); err != nil {
		return in, err
	} else if v == 0 {
		return in, errors.New("tcpmd5: the inherited socket does not listen; pass a listening socket")
	}
	if v, err := get(unix.SOL_SOCKET, unix.SO_PROTOCOL, "protocol"); err != nil {
		return in, err
	} else if v != unix.IPPROTO_TCP {
		return in, fmt.Errorf("tcpmd5: the inherited socket is protocol %d, not plain TCP (MPTCP?); keyed sockets are TCP", v)
	}
	v, err := get(unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT")
	if err != nil {
		return in, err
	}
	in.reusePort = v != 0
	if family, err := get(unix.SOL_SOCKET, unix.SO_DOMAIN, "family"); err != nil {
		return in, err
	} else if family == unix.AF_INET6 {
		v, err := get(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY")
		if err != nil {
			return in, err
		}
		in.v6only = v != 0
	}
	return in, nil
}

// sockSteer attaches to the reuseport group of fd the classic BPF program
// that sends each SYN to the socket shardOf picks for its source address
// among n (SO_ATTACH_REUSEPORT_CBPF). The program replaces the group's
// previous one at once, for the whole group.
func sockSteer(fd, n int) error {
	raw, err := bpf.Assemble(steeringProgram(n, skfNetOff))
	if err != nil {
		return fmt.Errorf("tcpmd5: assembling the steering program: %w", err)
	}
	prog := make([]unix.SockFilter, len(raw))
	for i, ins := range raw {
		prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOMEM): // the program is charged to the first socket's option memory
		return fmt.Errorf("tcpmd5: the first socket's option memory (%s) has no room to steer SYNs; raise it: %w", optmemFull(), os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err))
	}
	return fmt.Errorf("tcpmd5: steering SYNs across %d listening sockets: %w", n, os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF", err))
}

// othersInGroup counts the sockets beyond a listener's own want that are in
// the reuseport group of its sockets, bound to addr in family. The steering
// program picks sockets by their position in the group, in the order they
// joined it: a socket of another program that joined before one of ours
// would take that one's place and its SYNs. The kernel offers no list of a
// group, so the sockets are counted through sock_diag(7) in the calling
// thread's network namespace, which walks only the listeners of the port:
// every listening socket bound to addr is in the group (the kernel lets one
// bind there only by joining).
func othersInGroup(family int, addr netip.AddrPort, want int) (int, error) {
	if family == unix.AF_INET6 {
		addr = netip.AddrPortFrom(netip.AddrFrom16(addr.Addr().As16()), addr.Port())
	}
	n, err := netstat.Listening(addr)
	if err != nil {
		return 0, fmt.Errorf("tcpmd5: counting the sockets on %s: %w", addr, err)
	}
	return max(n-want, 0), nil
}
