package tcpmd5

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync/atomic"
	"syscall"
)

// group is a Listener's sockets: one SO_REUSEPORT group bound to one
// address, whose first socket carries the program that steers each SYN to
// the socket holding its peer's host keys (see [Listener]). Its fields
// change under the Listener's mu; cfg, network and address do not change
// after Listen.
type group struct {
	shards  []*shard         // the group, in the order the sockets joined it
	learned int              // the fewest keys a socket held when the kernel refused one more (0: none refused)
	steered bool             // the steering program is attached to the group
	fixed   bool             // an inherited socket without SO_REUSEPORT: no socket can join it
	cfg     net.ListenConfig // makes the sockets: the caller's, with MPTCP off
	network string
	address string // the first socket's, which the others bind too
}

// shardsFor returns the fewest shards whose fullest one holds no more host
// keys than hostRoom leaves beside every prefix key, MD5 and AO, by the
// placement shardOf makes.
func shardsFor(keys *keySet) int {
	hosts := make([]uint32, 0, keys.hosts())
	for id := range keys.md5.hosts {
		hosts = append(hosts, peerHash(id.peer.Addr()))
	}
	for id := range keys.ao.hosts {
		hosts = append(hosts, peerHash(id.peer.Addr()))
	}
	room := hostRoom(socketCapacity(), keys.prefixes())
	if room <= 0 || len(hosts) <= room {
		return 1
	}
	loads := make([]int, maxShards)
	fits := func(n int) bool {
		clear(loads[:n])
		for _, h := range hosts {
			s := shardOf(h, n)
			if loads[s]++; loads[s] > room {
				return false
			}
		}
		return true
	}
	// A step of linear hashing splits one shard and moves no other key, so
	// the fullest shard never fills up as n grows: the search can halve.
	least := max(2, len(hosts)/room)
	return least + sort.Search(maxShards-least, func(i int) bool { return fits(least + i) })
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

// closeShards closes the group's sockets, the newest first: the kernel
// fills a closed socket's place in the group with the last one, so this
// order never moves a socket under the steering program.
func (g *group) closeShards() error {
	var err error
	for i := len(g.shards) - 1; i >= 0; i-- {
		err = g.shards[i].close()
	}
	return err
}

// holders returns the sockets that hold keys for peer: the one shardOf
// picks for a host, every one for a prefix.
func (g *group) holders(peer netip.Prefix) []*shard {
	if peer.IsSingleIP() {
		i := shardOf(peerHash(peer.Addr()), len(g.shards))
		return g.shards[i : i+1]
	}
	return g.shards
}

// crowded reports whether the new host key id would find its socket with
// room host keys already, and that socket could give some away by growing
// the group.
func (g *group) crowded(id keyID, room int) bool {
	s := g.shards[shardOf(peerHash(id.peer.Addr()), len(g.shards))]
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
	if l.fixed {
		return errFixedGroup
	}
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
	// The new socket takes its keys and joins the group, and the group is
	// counted, without the lock: the program for n sockets steers no SYN
	// to it, and the keys stay as they are (l.changing). The new socket is
	// n-th in the group only if no other joined before it; one that joins
	// later comes after it, where the program for n+1 sockets never steers.
	var s *shard
	var err error
	l.unlocked(func() {
		if s, err = listenShard(context.Background(), l.cfg, l.network, l.address, keys, aoKeys); err == nil {
			if err = checkGroup(s, n+1); err != nil {
				s.close()
			}
		}
	})
	if err != nil {
		return err
	}
	err = l.fan.add(s)
	if err == nil {
		if err = steer(l.shards[0].rc, n+1); err != nil {
			l.fan.remove(s)
		}
	}
	if err != nil {
		s.close() // the last socket of the group: closing it moves no other
		return err
	}
	l.shards = append(l.shards, s)
	keepDescriptorsAhead(s)
	// A connection the split shard verified before the switch may still
	// wait in its queue: it holds its own copy of the key, and removeFrom
	// judges it before the key goes. A key it cannot delete stays, unused.
	_ = removeFrom(l, split, moved...)
	_ = removeFrom(l, split, aoMoved...)
	return nil
}

// fdTableAhead is the descriptor table size keepDescriptorsAhead last
// asked for, process-wide.
var fdTableAhead atomic.Int64

// keepDescriptorsAhead keeps the process's descriptor table a doubling
// ahead of s, the group's newest socket: once its descriptor passes half
// the table, a goroutine of its own has the kernel double the table, so
// that the sockets grow adds with the listener's lock held, Accept
// waiting, never pay the RCU grace period (milliseconds) the kernel waits
// to grow it.
func keepDescriptorsAhead(s *shard) {
	fd, err := control(s.rc, func(fd int) (int, error) { return fd, nil })
	if err != nil {
		return
	}
	want := int64(2) << bits.Len(uint(fd)) // twice the power of two above fd
	for {
		asked := fdTableAhead.Load()
		if want <= asked {
			return
		}
		if fdTableAhead.CompareAndSwap(asked, want) {
			break
		}
	}
	go controlErr(s.rc, func(fd int) error { return sockFDTable(fd, int(want)) })
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
		if err != nil || l.drain(into, back) != nil || steer(l.shards[0].rc, m) != nil {
			return
		}
		_ = l.drain(last, nil)
		l.shards = l.shards[:m]
		l.fan.remove(last)
		last.close() // the last socket of the group: closing it moves no other
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

// place makes room for a key of either kind, then installs it with
// install, which returns the socket that refused it and leaves no socket
// changed when it fails. A new secret for an installed key takes no room.
//
// The group is bounded: a prefix key goes on every socket, so more sockets
// cannot make room for it, and it never grows the group; a host key grows
// it by one socket where the socket its peer's SYNs reach holds hostRoom
// host keys, and by up to maxGrowth only where the kernel finds that
// socket's option memory full. A key that cannot fit is refused before
// any socket is added, and a key the kernel refuses after the group grew
// shrinks it back: a refused key changes nothing. A refusal (ENOMEM)
// teaches the listener what its sockets really hold, the caller's socket
// filters and options included.
func (l *Listener) place(id keyID, installed bool, install func() (*shard, error)) error {
	if installed {
		_, err := install()
		return err
	}
	prefixes := l.keys.prefixes()
	if !id.peer.IsSingleIP() {
		if prefixes+1 > l.capacity() {
			return fmt.Errorf("tcpmd5: key for %s: %d prefix keys on every socket is more than its option memory holds (%s): %w", id.name(), prefixes+1, optmemFull(), errFull)
		}
		if full, err := install(); err != nil {
			if keysFull(err) {
				l.learn(full)
				return fmt.Errorf("%w; a prefix key takes room on every socket of the group, so more sockets cannot make room for it", err)
			}
			return err
		}
		return nil
	}
	room, hosts := hostRoom(l.capacity(), prefixes), l.keys.hosts()+1
	if room < 1 || (hosts+room-1)/room > maxShards {
		return fmt.Errorf("tcpmd5: key for %s: %d prefix keys leave no room for %d host keys on %d sockets (%s): %w", id.name(), prefixes, hosts, maxShards, optmemFull(), errFull)
	}
	n := len(l.shards)
	budget := min(n, maxGrowth)
	if l.crowded(id, room) && l.grow() == nil {
		// One socket ahead of need: linear hashing splits the sockets in
		// turn, so the group keeps pace with the keys one step a SetKey,
		// and a key that still finds its socket crowded goes there while
		// its option memory has room. A socket that is full grows the
		// group further, within the budget.
		budget--
	}
	for {
		full, err := install()
		if err == nil {
			return nil
		}
		if keysFull(err) {
			l.learn(full)
			if full.keys.hosts() > 0 && budget > 0 {
				budget--
				gerr := l.grow()
				if gerr == nil {
					continue
				}
				err = fmt.Errorf("%w; adding a socket to the listener's group failed too: %w", err, gerr)
			}
		}
		l.shrink(n)
		return err
	}
}

// maxGrowth bounds the sockets one key adds to the group, so that no
// SetKey holds the listener, and Accept with it, for long: a crowded
// socket adds one, and only a key whose socket's option memory is full
// (ENOMEM) adds more, up to maxGrowth, since linear hashing may need
// several steps before it splits that socket.
const maxGrowth = 4

// capacity is how many keys one socket of the group holds: what its
// option memory holds for MD5 keys, or less if the kernel said so (learn).
// The Listener's mu is held.
func (g *group) capacity() int {
	if g.learned > 0 {
		return min(g.learned, socketCapacity())
	}
	return socketCapacity()
}

// learn records that s, which refused a key with ENOMEM, holds no more
// keys than it has. The Listener's mu is held.
func (g *group) learn(s *shard) {
	if s != nil && s.keys.len() > 0 && (g.learned == 0 || s.keys.len() < g.learned) {
		g.learned = s.keys.len()
	}
}

// errFull is what a key that no socket of the group has room for wraps.
// It matches ENOMEM, as the kernel's own refusal does.
var errFull = fmt.Errorf("no socket of the group can take it: %w", syscall.ENOMEM)

// hostRoom is how many host keys one socket takes beside prefixes prefix
// keys when its option memory holds capacity keys: hostsPerSocket, or
// what option memory holds beside the prefix keys if that is less. Prefix
// keys take no room from host keys before that: they go on every socket,
// so thinning out the host keys for them would copy every prefix key onto
// more sockets.
func hostRoom(capacity, prefixes int) int {
	return min(hostsPerSocket, capacity-prefixes)
}
