package tcpmd5

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ListenConfig is a drop-in for [net.ListenConfig] whose listeners verify
// and sign RFC 2385 TCP MD5 signatures. The embedded [net.ListenConfig] keeps
// its meaning: its Control hook runs first, then the keys are installed, all
// before bind(2) and listen(2), so the very first handshake is protected.
// The zero value listens like [net.ListenConfig] and accepts only after
// [Listener.SetKey] or with AllowUnsigned.
//
// The listening socket is plain TCP: Go 1.24+ listeners default to MPTCP,
// which takes no MD5 keys, so Listen turns MPTCP off whatever the embedded
// configuration says.
type ListenConfig struct {
	net.ListenConfig

	// Keys are installed on the listening socket. The kernel then drops
	// every segment from a covered peer that does not carry a valid
	// signature with that peer's secret.
	Keys []Key

	// AOKeys are TCP-AO keys (RFC 5925) installed on the listening socket
	// beside Keys: a peer is covered by MD5 keys or by AO keys, never both,
	// so that one listener serves MD5 and AO peers side by side while they
	// migrate. Listen refuses an AO key whose peers overlap an MD5 key's.
	AOKeys []AOKey

	// AllowUnsigned hands over connections from peers that no installed key
	// covers. The kernel lets such peers connect without a signature; by
	// default Accept closes those connections with a reset and counts them
	// (see [Listener.RefusedUnsigned]), so that a missing key can never mean
	// an unprotected session. Set it for listeners that serve signed and
	// unsigned peers side by side.
	AllowUnsigned bool

	// KeyChain, if not nil, holds keys that take over from each other on a
	// schedule: the listener holds the chain's keys of each moment beside
	// Keys and AOKeys, and every connection it accepts is kept in step with
	// the chain (see [KeyChain]). A chain's key and one of Keys or AOKeys
	// that cover the same peers are an error, and so is the Listener's
	// SetKey or RemoveKey (and their AO twins) for a peer the chain covers.
	KeyChain *KeyChain

	// OnRefuse, if not nil, is told of every connection Accept refuses,
	// after it is closed: the peer, the address it reached and why (see
	// [RefusalReason]). It runs in the goroutine that called Accept, which
	// waits for it, so it must not block; it may call the Listener's
	// methods. [Listener.RefusedUnsigned] counts the same connections.
	OnRefuse func(Refusal)

	// TTLSecurity, when not 0, is the most hops a peer may be away (RFC
	// 5082 GTSM, "ttl-security hops" on routers): the listening socket
	// sends with TTL and hop limit 255 and, from before listen(2), drops
	// every segment, SYNs included, that arrives with less than
	// 256-TTLSecurity; accepted connections inherit both. IPv4 peers of a
	// dual-stack socket are covered. It works with and without Keys; where
	// the system cannot do it, Listen fails with [ErrTTLSecurityUnsupported].
	TTLSecurity int
}

// Listen announces on the local network address like
// [net.ListenConfig.Listen], for "tcp", "tcp4" and "tcp6", with lc.Keys
// installed before the socket listens. If any key cannot be installed, Listen
// fails and the socket is closed: nothing is left half-applied.
//
// When the keys are more than one socket should hold (64 host keys, or
// fewer if net.core.optmem_max is small), Listen spreads them over a group
// of SO_REUSEPORT sockets bound to the same address, each with its share of
// the keys before it listens; see [Listener].
func (lc *ListenConfig) Listen(ctx context.Context, network, address string) (*Listener, error) {
	if err := checkTCP("listen", network); err != nil {
		return nil, err
	}
	l, keys, aoKeys, err := lc.newListener(network)
	if err != nil {
		return nil, err
	}
	// The chain's keys of now go on before the socket listens, as Keys do.
	var chained keySet
	if lc.KeyChain != nil {
		if err := lc.KeyChain.overlaps(keys, aoKeys); err != nil {
			return nil, &net.OpError{Op: "listen", Net: network, Err: err}
		}
		ck, cao := lc.KeyChain.current()
		for _, k := range ck {
			chained.md5.set(k)
		}
		for _, k := range cao {
			chained.ao.set(k.bare())
		}
		keys, aoKeys = append(keys, ck...), append(aoKeys, cao...)
	}
	for _, k := range keys { // a later key replaces an earlier one, as in the kernel
		l.keys.md5.set(k.clone())
	}
	for _, k := range aoKeys {
		if err := k.clash(&l.keys); err != nil {
			return nil, &net.OpError{Op: "listen", Net: network, Err: err}
		}
		l.keys.ao.set(k.clone())
	}
	hosts := l.keys.hosts()
	_, port, _ := net.SplitHostPort(address)
	for n, tries := shardsFor(&l.keys), 1; ; tries++ {
		err := l.listenGroup(ctx, address, n)
		if err == nil {
			break
		}
		// Bound to port 0 with SO_REUSEPORT, a socket can get the port of
		// another one still on its way to listening, and join its group:
		// another port will do.
		if errors.Is(err, errGroupShared) && (port == "0" || port == "") && tries < 10 {
			continue
		}
		// The estimate of a socket's room was high: try more sockets, as
		// long as that leaves fewer host keys on each.
		if !keysFull(err) || n >= min(hosts, maxShards) {
			return nil, err
		}
		n = min(n+(n+1)/2, maxShards)
	}
	if err := l.startFanIn(); err != nil {
		l.closeShards()
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if err := l.attachChain(lc.KeyChain, &chained); err != nil {
		l.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: l.Addr(), Err: err}
	}
	return l, nil
}

// attachChain makes chain, if not nil, keep l in step; installed are the
// chain's keys l holds already.
func (l *Listener) attachChain(chain *KeyChain, installed *keySet) error {
	if chain == nil {
		return nil
	}
	l.chain = chain
	return chain.attach(l, installed)
}

// newListener returns a Listener of lc without sockets, for network, with
// lc's keys normalized for the caller to install.
func (lc *ListenConfig) newListener(network string) (*Listener, []Key, []AOKey, error) {
	keys, err := normalizeKeys(lc.Keys)
	var aoKeys []AOKey
	if err == nil {
		aoKeys, err = normalizeAOKeys(lc.AOKeys)
	}
	if err == nil {
		err = checkTTLSecurity(lc.TTLSecurity)
	}
	if err != nil {
		return nil, nil, nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	l := &Listener{allowUnsigned: lc.AllowUnsigned, onRefuse: lc.OnRefuse, group: group{network: network, cfg: lc.ListenConfig}}
	l.cfg.SetMultipathTCP(false)
	if hops := lc.TTLSecurity; hops != 0 {
		l.cfg.Control = chain(l.cfg.Control, func(_, _ string, c syscall.RawConn) error { return applyTTLSecurity(c, hops) })
	}
	return l, keys, aoKeys, nil
}

// startFanIn makes the fan-in over the group's sockets, which Accept
// waits on.
func (l *Listener) startFanIn() error {
	l.first = l.shards[0]
	fan, err := newFanIn(&l.mu, func(s *shard, c *net.TCPConn) accepted { return l.judge(s, c, nil) })
	for i := 0; err == nil && i < len(l.shards); i++ {
		err = fan.add(l.shards[i])
	}
	if err != nil {
		if fan != nil {
			fan.close()
		}
		l.first = nil
		return err
	}
	l.fan = fan
	return nil
}

// ListenPacket is [net.ListenConfig.ListenPacket] for a configuration
// without keys or TTL security. With them it fails: a key signs TCP
// segments only, and a ListenConfig never hands out a socket it did not
// protect.
func (lc *ListenConfig) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	if len(lc.Keys) > 0 || len(lc.AOKeys) > 0 || lc.TTLSecurity != 0 {
		return nil, &net.OpError{Op: "listen", Net: network, Err: fmt.Errorf("tcpmd5: ListenPacket cannot carry keys or TTL security (TCP only); use a net.ListenConfig for %s", network)}
	}
	return lc.ListenConfig.ListenPacket(ctx, network, address)
}

// MultipathTCP reports false: a [Listener] is always plain TCP, since MPTCP
// sockets take no MD5 keys.
func (lc *ListenConfig) MultipathTCP() bool { return false }

// Listen announces on the local network address with keys installed, like
// [net.Listen] for "tcp", "tcp4" and "tcp6". It uses a zero [ListenConfig]
// otherwise, so connections from peers no key covers are refused.
func Listen(network, address string, keys ...Key) (*Listener, error) {
	lc := ListenConfig{Keys: keys}
	return lc.Listen(context.Background(), network, address)
}

// Listener is a TCP listener whose connections are signed with RFC 2385 keys.
// It implements [net.Listener]; Accept returns *[net.TCPConn] values. Its
// methods are safe for concurrent use, and keys can change while Accept runs.
//
// Each accepted connection keeps its own copy of the key that matched its
// peer during the handshake: later calls to SetKey and RemoveKey affect new
// handshakes only.
//
// A Listener holds any number of keys. One Linux socket holds only as many
// as its option memory allows (net.core.optmem_max: about 960 on 6.x
// kernels, 150 on older ones), and the kernel walks all of a socket's keys
// for every SYN it verifies and every key it installs. So when a new host
// key would be a socket's 65th host key, or the socket is full, the Listener
// adds another socket bound to the same address, in a SO_REUSEPORT group,
// and attaches a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that sends
// each SYN to the socket holding the key for its source address. Keys for a
// single host live on one socket; prefix keys live on every socket, on top
// of its 64 host keys as far as its option memory holds them. Accept takes
// connections from all sockets, Addr stays the same, and Close closes them
// all.
//
// Every socket of the group, the first included, has SO_REUSEPORT set, so
// another socket of the same user (a second instance of a daemon, say) can
// join the group by binding the same address. The program picks sockets by
// their position in the group, in the order they joined, and a foreign
// socket comes after the Listener's own, where the program never steers: it
// receives no SYN. The Listener therefore grows its group only while no
// other socket is bound to its address, which it asks sock_diag(7) for
// before each new socket starts receiving SYNs; with a foreign
// socket there, its keys stay on the sockets it has, up to what their
// option memory holds. A socket bound to the address before Listen makes
// Listen fail (EADDRINUSE).
type Listener struct {
	first         *shard // the first socket, whose address is the listener's
	allowUnsigned bool
	onRefuse      func(Refusal)
	refused       atomic.Uint64
	chain         *KeyChain // keeps the keys and accepted connections in step, if not nil

	// changing serializes changes to the keys, each of which holds mu, the
	// lock Accept judges under, for one socket's step at a time (yield).
	changing  sync.Mutex
	yielded   func() // tests only: runs when a change releases mu (unlocked)
	relocking func() // tests only: runs when it takes mu again
	replacing func() // tests only: runs while an AO key's replacement has neither key on a socket

	mu     sync.RWMutex // guards what follows
	keys   keySet       // the key registry: every key, with its secret
	closed bool
	group  // the sockets

	fan *fanIn // waits on every socket for Accept
}

var _ net.Listener = (*Listener)(nil)

// errNoListener is the error of a Listener that Listen did not make.
var errNoListener = errors.New("tcpmd5: the Listener was not made by Listen")

// Accept waits for and returns the next connection, a *[net.TCPConn]: one
// whose handshake the kernel verified with a key, or, with AllowUnsigned,
// an unsigned one from a peer that no key covers. Any other connection is
// closed with a reset and counted, and Accept waits for the next one.
//
// What decides is what the kernel did with the handshake, not the keys
// Accept finds now: the kernel completes no unsigned handshake with a peer
// a key covers, so a connection queued since the last key change was
// verified if and only if its peer is covered, and with TCP-AO if an AO
// key covers it; the connections queued while a key change is made are
// taken off the queue and judged by that change (see [Listener.SetKey]),
// an AO change by their AO state (TCP_AO_INFO). Socket filters, IPv6
// sticky options and descriptor limits change nothing of this.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptTCP is [Listener.Accept] with the concrete type.
func (l *Listener) AcceptTCP() (*net.TCPConn, error) {
	if l.first == nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: errNoListener}
	}
	for {
		a, err := l.fan.accept()
		if err != nil {
			return nil, l.opError(err)
		}
		if a.admit && !a.unsigned {
			if l.chain != nil {
				l.chain.track(a.c, true)
			}
			return a.c, nil
		}
		if a.admit && l.stillUncovered(a) {
			return a.c, nil
		} else if a.admit {
			a.why = RefusedKeyAdded
		}
		l.refuse(a)
	}
}

// refuse closes a's connection with a reset, counts it, and tells
// OnRefuse.
func (l *Listener) refuse(a accepted) {
	l.refused.Add(1)
	r := Refusal{Remote: addrPort(a.c.RemoteAddr()), Local: addrPort(a.c.LocalAddr()), Reason: a.why}
	_ = a.c.SetLinger(0)
	a.c.Close()
	if l.onRefuse != nil {
		l.onRefuse(r)
	}
}

// addrPort is a TCP address as a netip.AddrPort, IPv4 unmapped; the zero
// AddrPort if it is none.
func addrPort(a net.Addr) netip.AddrPort {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// opError is the error of every failed Accept, as [net.TCPListener]'s: Op
// "accept", the network the listener was made with, its address.
func (l *Listener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.network, Addr: l.Addr(), Err: err}
}

// RefusedUnsigned returns how many connections Accept has closed because
// they were not signed by a key the listener holds (see
// [ListenConfig.OnRefuse] for each one's peer and reason).
func (l *Listener) RefusedUnsigned() uint64 { return l.refused.Load() }

// SetKey installs k on the live listener, or replaces the secret of the key
// with the same Peer and Ifindex, for handshakes that start afterwards. A
// host key costs one setsockopt(2) call on the socket that holds its peer,
// however many keys are installed; a prefix key costs one on every socket
// of the group; and a key that finds its socket full grows the group first,
// which moves some host keys to the new socket (see [Listener]). It returns
// the kernel's ENOMEM only when growing cannot help, such as for a prefix
// key on a socket holding nothing but prefix keys. A prefix key goes on the
// sockets one at a time, and Accept goes on between two; a new socket of
// the group gets its keys while Accept goes on too. Other key changes and
// Close wait for the change to end.
//
// A key that covers peers no key covered before also takes the connections
// waiting in the accept queue of its sockets off it, to judge each by
// whether its handshake was verified (see [Listener.Accept]): if that
// fails (EMFILE, say), the key is deleted again and SetKey returns the
// error, with nothing changed.
func (l *Listener) SetKey(k Key) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	if err := l.chained(k.Peer); err != nil {
		return err
	}
	return setLive(l, k)
}

// chained returns an error if the listener's KeyChain covers peer, whose
// keys then change only through the chain.
func (l *Listener) chained(peer netip.Prefix) error {
	if l.chain == nil {
		return nil
	}
	return l.chain.overlapsPeers(peer)
}

// open returns why keys cannot change on l: it is closed, or Listen did
// not make it. l.mu is held.
func (l *Listener) open() error {
	switch {
	case l.first == nil:
		return errNoListener
	case l.closed:
		return net.ErrClosed
	}
	return nil
}

// RemoveKey deletes the key for k.Peer and k.Ifindex from the listener; the
// secret is ignored. Removing a key that is not installed is not an error.
// Connections already accepted keep their keys, and so do the ones waiting
// to be accepted: they are judged by the key that verified them. A
// RemoveKey that fails on a socket of the group (out of descriptors while
// it takes the connections waiting there, say) puts the key back on the
// sockets it had left, and returns the error with nothing changed.
func (l *Listener) RemoveKey(k Key) error {
	k, err := k.normalizePeer()
	if err != nil {
		return err
	}
	if err := l.chained(k.Peer); err != nil {
		return err
	}
	return removeLive(l, k)
}

// yield lets the accepts that wait for l.mu judge what they took, between
// two sockets of one key change: l.changing keeps every other change out,
// and each socket holds its keys with its queue judged, or neither.
func (l *Listener) yield() { l.unlocked(func() {}) }

// unlocked runs f with l.mu released, letting Accept in, in the middle of
// a key change that holds l.changing, which keeps the keys as they are; f
// touches nothing that Accept reads.
func (l *Listener) unlocked(f func()) {
	l.mu.Unlock()
	if l.yielded != nil {
		l.yielded()
	}
	f()
	if l.relocking != nil {
		l.relocking()
	}
	l.mu.Lock()
}

// stepwise runs step on each of shards in turn, each step one socket's
// whole change, and lets Accept in between two (yield); it stops at the
// first error and returns how many steps were done before it. l.mu and
// l.changing are held.
func (l *Listener) stepwise(shards []*shard, step func(*shard) error) (int, error) {
	for i, s := range shards {
		if i > 0 {
			l.yield()
		}
		if err := step(s); err != nil {
			return i, err
		}
	}
	return len(shards), nil
}

// Keys returns copies of the keys installed now, ordered by peer and
// interface.
func (l *Listener) Keys() []Key {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return list(&l.keys.md5)
}

// Addr returns the listener's network address, a *[net.TCPAddr]; nil for
// a Listener that Listen did not make.
func (l *Listener) Addr() net.Addr {
	if l.first == nil {
		return nil
	}
	return l.first.ln.Addr()
}

// Close stops listening on every socket of the group. Connections already
// accepted stay open.
func (l *Listener) Close() error {
	if l.first == nil {
		return &net.OpError{Op: "close", Net: "tcp", Err: errNoListener}
	}
	l.changing.Lock() // a key change in progress ends first
	l.mu.Lock()
	closed := l.closed
	l.closed = true // nothing changes the group from now on
	l.mu.Unlock()
	l.changing.Unlock()
	if closed {
		return l.first.ln.Close() // the net package's error for a second Close
	}
	if l.chain != nil {
		l.chain.detach(l)
	}
	// Without l.mu: closing the fan-in waits for an accept in progress,
	// which may be waiting for l.mu.
	l.fan.close()
	return l.closeShards()
}

// SetDeadline sets the deadline for Accept, as [net.TCPListener.SetDeadline]:
// a zero t means none, and a t in the past makes waiting Accept calls
// return an error that wraps [os.ErrDeadlineExceeded].
func (l *Listener) SetDeadline(t time.Time) error {
	if l.first == nil {
		return &net.OpError{Op: "set", Net: "tcp", Err: errNoListener}
	}
	l.fan.setDeadline(t)
	return nil
}

// SyscallConn returns the raw listening socket, as
// [net.TCPListener.SyscallConn]: the first socket of the group. Do not set
// or delete keys through it: Accept judges connections by the keys the
// Listener installed, so a key deleted there lets unsigned peers in that
// the Listener takes for covered.
func (l *Listener) SyscallConn() (syscall.RawConn, error) {
	if l.first == nil {
		return nil, errNoListener
	}
	return l.first.ln.SyscallConn()
}
