package tcpmd5

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/netstat"
)

// skfNetOff is SKF_NET_OFF of linux/filter.h: a classic BPF load from
// skfNetOff+k reads byte k of the IP header, wherever the packet data starts.
// A reuseport program runs with the data past the TCP header, so the source
// address is reachable only this way.
const skfNetOff = -0x100000

// joinGroup sets SO_REUSEPORT on a socket before bind(2), so that the
// listener can later add sockets bound to the same address.
func joinGroup(c syscall.RawConn) error {
	return controlErr(c, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("tcpmd5: joining a reuseport group: %w", os.NewSyscallError("setsockopt", err))
		}
		return nil
	})
}

// steer attaches to the reuseport group of the socket behind c the classic
// BPF program that sends each SYN to the socket shardOf picks for its
// source address among n (SO_ATTACH_REUSEPORT_CBPF). The program replaces
// the group's previous one at once, for the whole group.
func steer(c syscall.RawConn, n int) error {
	prog := steeringProgram(n)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return controlErr(c, func(fd int) error {
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog); err != nil {
			return fmt.Errorf("tcpmd5: steering SYNs across %d listening sockets (SO_ATTACH_REUSEPORT_CBPF): %w", n, os.NewSyscallError("setsockopt", err))
		}
		return nil
	})
}

// steeringProgram computes peerHash of the packet's source address, IPv4 or
// IPv6 (a dual-stack socket sees both), and returns shardOf that hash among
// n sockets: the index of the socket in the reuseport group, which is the
// order in which the sockets started listening.
func steeringProgram(n int) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jump := func(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	load := func(size uint16, off int32) unix.SockFilter {
		return stmt(unix.BPF_LD|size|unix.BPF_ABS, uint32(skfNetOff+off))
	}
	// IPv6: h = w0; h = h*K ^ w for the other three words of the source.
	v6 := []unix.SockFilter{load(unix.BPF_W, 8)}
	for off := int32(12); off <= 20; off += 4 {
		v6 = append(v6,
			stmt(unix.BPF_ALU|unix.BPF_MUL|unix.BPF_K, wordMul),
			stmt(unix.BPF_MISC|unix.BPF_TAX, 0),
			load(unix.BPF_W, off),
			stmt(unix.BPF_ALU|unix.BPF_XOR|unix.BPF_X, 0),
		)
	}
	prog := []unix.SockFilter{
		load(unix.BPF_B, 0), // version and header length
		stmt(unix.BPF_ALU|unix.BPF_RSH|unix.BPF_K, 4),
		jump(unix.BPF_JMP|unix.BPF_JEQ|unix.BPF_K, 4, 0, 2),
		load(unix.BPF_W, 12), // IPv4: h = the source address
		stmt(unix.BPF_JMP|unix.BPF_JA, uint32(len(v6))),
	}
	prog = append(prog, v6...)
	// mix(h), as in mix.
	for _, m := range []struct{ shift, mul uint32 }{{16, mix1}, {15, mix2}, {16, 0}} {
		prog = append(prog,
			stmt(unix.BPF_MISC|unix.BPF_TAX, 0),
			stmt(unix.BPF_ALU|unix.BPF_RSH|unix.BPF_K, m.shift),
			stmt(unix.BPF_ALU|unix.BPF_XOR|unix.BPF_X, 0),
		)
		if m.mul != 0 {
			prog = append(prog, stmt(unix.BPF_ALU|unix.BPF_MUL|unix.BPF_K, m.mul))
		}
	}
	// shardOf(h, n): h & (2<<level - 1), or h & (1<<level - 1) past n.
	level := bits.Len(uint(n)) - 1
	return append(prog,
		stmt(unix.BPF_ST, 0), // M[0] = h
		stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, 2<<level-1),
		jump(unix.BPF_JMP|unix.BPF_JGE|unix.BPF_K, uint32(n), 1, 0),
		stmt(unix.BPF_RET|unix.BPF_A, 0),
		stmt(unix.BPF_LD|unix.BPF_MEM, 0),
		stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, 1<<level-1),
		stmt(unix.BPF_RET|unix.BPF_A, 0),
	)
}

// checkGroup makes sure that the reuseport group of a listener's sockets,
// bound to addr in family, holds its own want sockets and no other. The
// steering program picks sockets by their position in the group, in the
// order they joined it: a socket of another program that joined before one
// of ours would take that one's place and its SYNs. The kernel offers no
// list of a group, so the sockets are counted in /proc/net/tcp or tcp6 of
// the calling thread's network namespace: every listening socket bound to
// addr is in the group (the kernel lets one bind there only by joining).
func checkGroup(family int, addr netip.AddrPort, want int) error {
	if family == unix.AF_INET6 {
		addr = netip.AddrPortFrom(netip.AddrFrom16(addr.Addr().As16()), addr.Port())
	}
	socks, err := netstat.Sockets()
	if err != nil {
		return fmt.Errorf("tcpmd5: counting the sockets on %s: %w", addr, err)
	}
	n := 0
	for _, s := range socks {
		if s.Local == addr && s.State == netstat.StateListen {
			n++
		}
	}
	if n > want {
		return fmt.Errorf("tcpmd5: another socket listens on %s with SO_REUSEPORT (%d sockets, %d of them this listener's): it joined the listener's group, where SYNs steered to it would be lost; stop the other program or listen on another address", addr, n, want)
	}
	return nil
}

// keysFull reports whether err says that a socket's option memory
// (net.core.optmem_max) holds no more keys.
func keysFull(err error) bool { return errors.Is(err, unix.ENOMEM) }

// maxSocketKeys caps the keys a Listener puts on one socket, well below the
// roughly 960 its option memory holds: the kernel keeps a socket's keys in a
// list and walks it for every SYN it verifies and every key it installs, so
// spreading peers over more sockets keeps handshakes and SetKey cheap as the
// peers grow. Prefix keys, which go on every socket, may exceed it.
const maxSocketKeys = 128

// keysPerSocket is how many keys a Listener puts on one socket: what its
// option memory (net.core.optmem_max, read once) holds, at most
// maxSocketKeys.
var keysPerSocket = sync.OnceValue(func() int {
	n := 150 // what the smallest default, optmem_max 20480 on old kernels, holds
	if optmem, err := optmemMax(); err == nil && optmem >= keyBytes {
		n = optmem / keyBytes
	}
	return min(n, maxSocketKeys)
})
