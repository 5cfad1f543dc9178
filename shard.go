package tcpmd5

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/bpf"
)

// A socket's option memory (net.core.optmem_max) holds about 960 keys on a
// 6.x kernel, then setsockopt(2) fails with ENOMEM. A Listener therefore
// spreads its keys over a group of SO_REUSEPORT sockets bound to the same
// address, its shards, and a classic BPF program steers each SYN to the
// shard that holds its peer's key, by a hash of the source address.
//
// Host keys (/32, /128) live on the one shard shardOf picks for their peer;
// prefix keys may cover peers of any shard and live on all of them. The
// group grows by linear hashing: going from n to n+1 shards splits one shard,
// n - 2^level, so only its keys move, to the new one. The new socket gets
// them before the program that steers to it is attached, and the old copies
// are deleted after, so no handshake finds a socket without its key.

// The multipliers of peerHash and mix, shared with the steering program.
const (
	wordMul = 0x9e3779b1
	mix1    = 0x7feb352d
	mix2    = 0x846ca68b
)

// steeringProgram computes peerHash of the packet's source address, IPv4 or
// IPv6 (a dual-stack socket sees both), and returns shardOf that hash among
// n sockets: the index of the socket in the reuseport group, which is the
// order in which the sockets started listening. The IP header starts at
// offset base: SKF_NET_OFF in the kernel, whose reuseport programs see the
// data past the TCP header, and 0 in bpf.VM tests fed a bare IP header.
func steeringProgram(n int, base int32) []bpf.Instruction {
	load := func(size int, off int32) bpf.Instruction {
		return bpf.LoadAbsolute{Off: uint32(base + off), Size: size}
	}
	// IPv6: h = w0; h = h*K ^ w for the other three words of the source.
	v6 := []bpf.Instruction{load(4, 8)}
	for off := int32(12); off <= 20; off += 4 {
		v6 = append(v6,
			bpf.ALUOpConstant{Op: bpf.ALUOpMul, Val: wordMul},
			bpf.TAX{},
			load(4, off),
			bpf.ALUOpX{Op: bpf.ALUOpXor},
		)
	}
	prog := []bpf.Instruction{
		load(1, 0), // version and header length
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 4, SkipFalse: 2},
		load(4, 12), // IPv4: h = the source address
		bpf.Jump{Skip: uint32(len(v6))},
	}
	prog = append(prog, v6...)
	// mix(h), as in mix.
	for _, m := range []struct{ shift, mul uint32 }{{16, mix1}, {15, mix2}, {16, 0}} {
		prog = append(prog,
			bpf.TAX{},
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: m.shift},
			bpf.ALUOpX{Op: bpf.ALUOpXor},
		)
		if m.mul != 0 {
			prog = append(prog, bpf.ALUOpConstant{Op: bpf.ALUOpMul, Val: m.mul})
		}
	}
	// shardOf(h, n): h & (2<<level - 1), or h & (1<<level - 1) past n.
	level := bits.Len(uint(n)) - 1
	return append(prog,
		bpf.StoreScratch{Src: bpf.RegA, N: 0},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 2<<level - 1},
		bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: uint32(n), SkipTrue: 1},
		bpf.RetA{},
		bpf.LoadScratch{Dst: bpf.RegA, N: 0},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 1<<level - 1},
		bpf.RetA{},
	)
}

// maxShards bounds a listener's group: with about 960 keys a socket, it
// holds millions of host keys.
const maxShards = 1 << 12

// peerHash hashes a source address for shardOf; the steering program
// computes the same from the packet's IP header (big-endian words).
func peerHash(a netip.Addr) uint32 {
	if a.Is4() {
		b := a.As4()
		return mix(binary.BigEndian.Uint32(b[:]))
	}
	b := a.As16()
	h := binary.BigEndian.Uint32(b[:4])
	for i := 4; i < 16; i += 4 {
		h = h*wordMul ^ binary.BigEndian.Uint32(b[i:])
	}
	return mix(h)
}

// mix spreads the bits of h over all 32 (a multiply-xorshift finalizer).
func mix(h uint32) uint32 {
	h ^= h >> 16
	h *= mix1
	h ^= h >> 15
	h *= mix2
	h ^= h >> 16
	return h
}

// shardOf picks one of n shards for hash h by linear hashing: the low
// level+1 bits of h, or the low level bits where those name a shard not
// made yet, with 2^level <= n < 2^(level+1).
func shardOf(h uint32, n int) int {
	level := bits.Len(uint(n)) - 1
	s := h & (2<<level - 1)
	if s >= uint32(n) {
		s = h & (1<<level - 1)
	}
	return int(s)
}

// shard is one listening socket of a Listener's group.
type shard struct {
	ln     *net.TCPListener
	rc     syscall.RawConn
	family int         // the socket's address family, read once
	closed atomic.Bool // close was called: Accept takes nothing more from it

	keys keySet // the keys installed on the socket, without secrets; guarded by the Listener's mu

	// Accept asks each connection for its AO state (TCP_AO_INFO) instead
	// of reading keys: an AO change on the socket has not yet had its
	// queue judged (Listener.askingAO). Guarded by the Listener's mu.
	askAO bool
}

// flips reports whether adding or removing k changes which peers t, a
// socket's table of k's kind, covers: always for a prefix key, and for a
// host key unless another key covers the host too.
func flips[K tableKey](t *keyTable[K], k K) bool {
	id := k.id()
	return !id.peer.IsSingleIP() || !t.coversExcept(id.peer.Addr(), id.ifindex, id)
}

// listenShard makes one socket of a group, with cfg (MPTCP off): before
// bind(2) and listen(2), the caller's Control runs, SO_REUSEPORT is set,
// then each of more, then the MD5 keys and the AO keys are installed.
func listenShard(ctx context.Context, cfg net.ListenConfig, network, address string, keys []Key, aoKeys []AOKey, more ...hook) (*shard, error) {
	join := func(_, _ string, c syscall.RawConn) error { return joinGroup(c) }
	install := func(_, _ string, c syscall.RawConn) error { return applyKeys(c, 0, keys) }
	installAO := func(_, _ string, c syscall.RawConn) error { return applyAOKeys(c, 0, aoKeys) }
	cfg.Control = chain(cfg.Control, append(append([]hook{join}, more...), install, installAO)...)
	ln, err := cfg.Listen(ctx, network, address)
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		return nil, fmt.Errorf("tcpmd5: no descriptors for one more socket of the listener's group; raise RLIMIT_NOFILE: %w", err)
	}
	if err != nil {
		return nil, err
	}
	tl := ln.(*net.TCPListener)
	rc, err := tl.SyscallConn()
	if err != nil {
		tl.Close()
		return nil, err
	}
	family, err := rawFamily(rc)
	if err != nil {
		tl.Close()
		return nil, err
	}
	s := &shard{ln: tl, rc: rc, family: family}
	for _, k := range keys {
		s.keys.md5.set(k.bare())
	}
	for _, k := range aoKeys {
		s.keys.ao.set(k.bare())
	}
	// The listener keeps its ListenConfig, and with it the hooks: they
	// must not keep the keys, secrets and all, once they are installed.
	keys, aoKeys = nil, nil
	return s, nil
}

// accept takes the next connection off the socket's queue; its error is
// the one under the net package's *net.OpError, which Accept wraps in its own.
func (s *shard) accept() (*net.TCPConn, error) {
	c, err := s.ln.AcceptTCP()
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return c, err
}

// close closes the socket.
func (s *shard) close() error {
	s.closed.Store(true)
	return s.ln.Close()
}

// addrPort is the address the socket is bound to.
func (s *shard) addrPort() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }
