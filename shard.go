package tcpmd5

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"slices"
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
	family int             // the socket's address family, read once
	queue  *os.File        // a second descriptor of the socket, to wait on its accept queue
	qrc    syscall.RawConn // queue's
	closed atomic.Bool     // close was called: its accept goroutine ends

	keys keySet // the keys installed on the socket, without secrets; guarded by the Listener's mu
}

// flips reports whether adding or removing the MD5 key k changes which
// peers the socket's MD5 keys cover: always for a prefix key, and for a
// host key unless another key covers the host too.
func (s *shard) flips(k Key) bool {
	return !k.Peer.IsSingleIP() || !s.keys.md5.coversExcept(k.Peer.Addr(), k.Ifindex, k.id())
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
		return nil, fmt.Errorf("tcpmd5: no descriptors for one more socket of the group (two each); raise RLIMIT_NOFILE: %w", err)
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
	if s.queue, err = watchQueue(rc); err != nil {
		tl.Close()
		return nil, err
	}
	if s.queue != nil {
		if s.qrc, err = s.queue.SyscallConn(); err != nil {
			s.close()
			return nil, err
		}
	}
	for _, k := range keys {
		s.keys.md5.set(k.bare())
	}
	for _, k := range aoKeys {
		s.keys.ao.set(k.bare())
	}
	return s, nil
}

// shardsFor returns the fewest shards whose fullest one holds its host keys
// and every prefix key, MD5 and AO, within keysPerSocket, by the placement
// shardOf makes.
func shardsFor(keys *keySet) int {
	hosts := make([]uint32, 0, keys.hosts())
	for id := range keys.md5.hosts {
		hosts = append(hosts, peerHash(id.peer.Addr()))
	}
	for id := range keys.ao.hosts {
		hosts = append(hosts, peerHash(id.peer.Addr()))
	}
	room := keysPerSocket() - keys.prefixes()
	if room <= 0 || len(hosts) <= room {
		return 1
	}
	loads := make([]int, maxShards)
	for n := max(2, len(hosts)/room); n < maxShards; n++ {
		clear(loads[:n])
		fits := true
		for _, h := range hosts {
			s := shardOf(h, n)
			if loads[s]++; loads[s] > room {
				fits = false
				break
			}
		}
		if fits {
			return n
		}
	}
	return maxShards
}

// placeKeys returns the keys of each of n shards: every prefix key, then
// the host keys shardOf places there.
func placeKeys[K tableKey](t *keyTable[K], n int) [][]K {
	prefixes := slices.Collect(maps.Values(t.prefixes))
	out := make([][]K, n)
	for i := range out {
		out[i] = slices.Clone(prefixes)
	}
	for id, k := range t.hosts {
		s := shardOf(peerHash(id.peer.Addr()), n)
		out[s] = append(out[s], k)
	}
	return out
}

// listenGroup makes a group of n shards holding the keys of t, each socket
// with its keys before it listens. The first socket carries the steering
// program before it binds, which also keeps it out of any reuseport group
// another process of the same user may have on the address. Until the
// other sockets have joined, SYNs meant for them reach a socket without
// their key, which drops them if signed and hands them to Accept's policy
// if not.
func (l *Listener) listenGroup(ctx context.Context, address string, n int) error {
	perShard, aoPerShard := placeKeys(&l.keys.md5, n), placeKeys(&l.keys.ao, n)
	// The first socket carries the program before it binds. A group of one
	// works without: a kernel that refuses it fails only the first growth.
	steerFirst := func(_, _ string, c syscall.RawConn) error {
		err := steer(c, n)
		l.steered = err == nil
		if n == 1 {
			return nil
		}
		return err
	}
	first, err := listenShard(ctx, l.cfg, l.network, address, perShard[0], aoPerShard[0], steerFirst)
	if err != nil {
		return err
	}
	l.shards = []*shard{first}
	l.address = first.ln.Addr().String()
	for i := 1; i < n; i++ {
		s, err := listenShard(ctx, l.cfg, l.network, l.address, perShard[i], aoPerShard[i])
		if err != nil {
			l.closeShards()
			return err
		}
		l.shards = append(l.shards, s)
	}
	if err := checkGroup(first, n); err != nil {
		l.closeShards()
		return err
	}
	return nil
}

// errGroupShared reports that sockets of another program joined a
// listener's reuseport group.
var errGroupShared = errors.New("another program's sockets share the listener's address")

// checkGroup fails if the reuseport group of s holds sockets beyond the
// listener's own want.
func checkGroup(s *shard, want int) error {
	others, err := othersInGroup(s.family, s.addrPort(), want)
	if err != nil {
		return err
	}
	if others > 0 {
		return fmt.Errorf("tcpmd5: %d other sockets joined the listener's group on %s and would take its SYNs: %w", others, s.addrPort(), errGroupShared)
	}
	return nil
}

// close closes the socket: its listener and the descriptor to wait on.
func (s *shard) close() error {
	s.closed.Store(true)
	err := s.ln.Close()
	if s.queue != nil {
		s.queue.Close()
	}
	return err
}

// addrPort is the address the socket is bound to.
func (s *shard) addrPort() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

// closeShards closes the group's sockets, the newest first: the kernel
// fills a closed socket's place in the group with the last one, so this
// order never moves a socket under the steering program.
func (l *Listener) closeShards() error {
	var err error
	for i := len(l.shards) - 1; i >= 0; i-- {
		err = l.shards[i].close()
	}
	return err
}

// holders returns the sockets that hold keys for peer: the one shardOf
// picks for a host, every one for a prefix.
func (l *Listener) holders(peer netip.Prefix) []*shard {
	if peer.IsSingleIP() {
		i := shardOf(peerHash(peer.Addr()), len(l.shards))
		return l.shards[i : i+1]
	}
	return l.shards
}

// crowded reports whether the new host key id would find its socket with
// room host keys already, and that socket could give some away by growing
// the group.
func (l *Listener) crowded(id keyID, room int) bool {
	s := l.shards[shardOf(peerHash(id.peer.Addr()), len(l.shards))]
	hosts := s.keys.hosts()
	return hosts >= room && hosts > 0
}

// grow adds a socket to the group. Going from n to n+1 shards, linear
// hashing splits shard n - 2^level: the new socket gets every prefix key
// and the split shard's host keys that shardOf now places on it, then joins
// the group while the program still steers among n, then the program for
// n+1 replaces it, and only then are the moved keys deleted from the split
// shard. A SYN therefore always reaches a socket holding its peer's key.
func (l *Listener) grow() error {
	n := len(l.shards)
	if n >= maxShards {
		return fmt.Errorf("tcpmd5: the listener already spreads its keys over %d sockets, its limit", n)
	}
	if !l.steered {
		if err := steer(l.shards[0].rc, n); err != nil {
			return err
		}
		l.steered = true
	}
	split := l.shards[n-1<<(bits.Len(uint(n))-1)]
	moved, aoMoved := movedKeys(&l.keys.md5, &split.keys.md5, n), movedKeys(&l.keys.ao, &split.keys.ao, n)
	keys := append(slices.Collect(maps.Values(l.keys.md5.prefixes)), moved...)
	aoKeys := append(slices.Collect(maps.Values(l.keys.ao.prefixes)), aoMoved...)
	s, err := listenShard(context.Background(), l.cfg, l.network, l.address, keys, aoKeys)
	if err != nil {
		return err
	}
	// The new socket is n-th in the group only if no other joined before
	// it; one that joins later comes after it, where the program for n+1
	// sockets never steers.
	err = checkGroup(s, n+1)
	if err == nil {
		err = steer(l.shards[0].rc, n+1)
	}
	if err != nil {
		s.close() // the last socket of the group: closing it moves no other
		return err
	}
	l.shards = append(l.shards, s)
	l.acceptFrom(s)
	// A connection the split shard verified before the switch may still
	// wait in its queue: it holds its own copy of the key, and removeFrom
	// judges it before the key goes. A key it cannot delete stays, unused.
	_ = removeFrom(l, split, moved...)
	_ = removeFrom(l, split, aoMoved...)
	return nil
}

// shrink undoes grow until the group has n sockets again: the last
// socket's host keys go back to the socket it was split from, the program
// steers among one socket fewer, and the last socket, its queue judged and
// handed to Accept, is closed. A step that fails stops it, and the group
// keeps the sockets it has, each holding its keys.
func (l *Listener) shrink(n int) {
	for len(l.shards) > n {
		last := l.shards[len(l.shards)-1]
		m := len(l.shards) - 1
		into := l.shards[m-1<<(bits.Len(uint(m))-1)]
		back, err := moveBack[Key](l, last, into)
		if err == nil {
			_, err = moveBack[AOKey](l, last, into)
		}
		if err != nil || l.drainMD5(into, back) != nil || steer(l.shards[0].rc, m) != nil {
			return
		}
		_ = l.drainMD5(last, nil)
		l.shards = l.shards[:m]
		// The last socket of the group: closing it moves no other. Its
		// descriptors close once its accept goroutine, which waits for
		// l.mu, has let go of them: not while l.mu is held.
		go last.close()
	}
}

// movedKeys returns the host keys of all, among those of split, that
// shardOf places on the new shard n of n+1.
func movedKeys[K tableKey](all, split *keyTable[K], n int) []K {
	var moved []K
	for id := range split.hosts {
		if k, ok := all.hosts[id]; ok && shardOf(peerHash(id.peer.Addr()), n+1) == n {
			moved = append(moved, k)
		}
	}
	return moved
}
