package tcpmd5

import (
	"cmp"
	"context"
	"net"
	"net/netip"
	"slices"
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

	// AllowUnsigned hands over connections from peers that no installed key
	// covers. The kernel lets such peers connect without a signature; by
	// default Accept closes those connections with a reset and counts them
	// (see [Listener.RefusedUnsigned]), so that a missing key can never mean
	// an unprotected session. Set it for listeners that serve signed and
	// unsigned peers side by side.
	AllowUnsigned bool
}

// Listen announces on the local network address like
// [net.ListenConfig.Listen], for "tcp", "tcp4" and "tcp6", with lc.Keys
// installed before the socket listens. If any key cannot be installed, Listen
// fails and the socket is closed: nothing is left half-applied.
func (lc *ListenConfig) Listen(ctx context.Context, network, address string) (*Listener, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	keys, err := normalizeKeys(lc.Keys)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	cfg := lc.ListenConfig
	cfg.SetMultipathTCP(false)
	user := cfg.Control
	cfg.Control = func(network, address string, c syscall.RawConn) error {
		if user != nil {
			if err := user(network, address, c); err != nil {
				return err
			}
		}
		return applyKeys(c, keys)
	}
	ln, err := cfg.Listen(ctx, network, address)
	if err != nil {
		return nil, err
	}
	tl := ln.(*net.TCPListener)
	rc, err := tl.SyscallConn()
	if err != nil {
		tl.Close()
		return nil, err
	}
	l := &Listener{tcp: tl, rc: rc, allowUnsigned: lc.AllowUnsigned}
	for _, k := range keys {
		l.keys.set(k.clone())
	}
	return l, nil
}

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
type Listener struct {
	tcp           *net.TCPListener
	rc            syscall.RawConn
	allowUnsigned bool
	refused       atomic.Uint64

	mu   sync.RWMutex // guards keys and serializes changes to the socket's keys
	keys keyTable
}

var _ net.Listener = (*Listener)(nil)

// Accept waits for and returns the next connection, a *[net.TCPConn]. Unless
// the listener was made with AllowUnsigned, connections from peers that no
// installed key covers are closed with a reset and counted, and Accept waits
// for the next one. The check uses the keys installed when Accept returns.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.AcceptTCP()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AcceptTCP is [Listener.Accept] with the concrete type.
func (l *Listener) AcceptTCP() (*net.TCPConn, error) {
	for {
		c, err := l.tcp.AcceptTCP()
		if err != nil {
			return nil, err
		}
		if l.allowUnsigned || l.covers(c.RemoteAddr()) {
			return c, nil
		}
		l.refused.Add(1)
		_ = c.SetLinger(0)
		c.Close()
	}
}

func (l *Listener) covers(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	addr, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.keys.covers(addr.Unmap())
}

// RefusedUnsigned returns how many connections Accept has closed because no
// installed key covered their peer.
func (l *Listener) RefusedUnsigned() uint64 { return l.refused.Load() }

// SetKey installs k on the live listener, or replaces the secret of the key
// with the same Peer and Ifindex. It costs one setsockopt(2) call however
// many keys are installed, and applies to handshakes that start afterwards.
func (l *Listener) SetKey(k Key) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := applyKeys(l.rc, []Key{k}); err != nil {
		return err
	}
	l.keys.set(k.clone())
	return nil
}

// RemoveKey deletes the key for k.Peer and k.Ifindex from the listener; the
// secret is ignored. Removing a key that is not installed is not an error.
// Connections already accepted keep their keys.
func (l *Listener) RemoveKey(k Key) error {
	k, err := k.normalizePeer()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.keys.keys[k.id()]; !ok {
		return nil
	}
	if err := removeKey(l.rc, k); err != nil {
		return err
	}
	l.keys.remove(k.id())
	return nil
}

// Keys returns copies of the keys installed now, ordered by peer and
// interface.
func (l *Listener) Keys() []Key {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]Key, 0, len(l.keys.keys))
	for _, k := range l.keys.keys {
		out = append(out, k.clone())
	}
	slices.SortFunc(out, func(a, b Key) int {
		if c := a.Peer.Addr().Compare(b.Peer.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Peer.Bits(), b.Peer.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(a.Ifindex, b.Ifindex)
	})
	return out
}

// Addr returns the listener's network address, a *[net.TCPAddr].
func (l *Listener) Addr() net.Addr { return l.tcp.Addr() }

// Close stops listening. Connections already accepted stay open.
func (l *Listener) Close() error { return l.tcp.Close() }

// SetDeadline sets the deadline for Accept, as [net.TCPListener.SetDeadline].
func (l *Listener) SetDeadline(t time.Time) error { return l.tcp.SetDeadline(t) }

// SyscallConn returns the raw listening socket, as
// [net.TCPListener.SyscallConn]. Keys set on it directly bypass
// [Listener.Keys] and the Accept policy.
func (l *Listener) SyscallConn() (syscall.RawConn, error) { return l.tcp.SyscallConn() }

// keyTable holds a listener's keys and answers, in time independent of
// their number, whether one covers a peer address.
type keyTable struct {
	keys  map[keyID]Key
	peers map[netip.Prefix]int // keys per peer prefix, over interfaces
	bits  [2][129]int          // peer prefixes per length: [0] IPv4, [1] IPv6
}

func (t *keyTable) set(k Key) {
	if t.keys == nil {
		t.keys = make(map[keyID]Key)
		t.peers = make(map[netip.Prefix]int)
	}
	id := k.id()
	if _, ok := t.keys[id]; !ok {
		if t.peers[k.Peer] == 0 {
			t.bits[family(k.Peer.Addr())][k.Peer.Bits()]++
		}
		t.peers[k.Peer]++
	}
	t.keys[id] = k
}

func (t *keyTable) remove(id keyID) {
	if _, ok := t.keys[id]; !ok {
		return
	}
	delete(t.keys, id)
	if t.peers[id.peer]--; t.peers[id.peer] == 0 {
		delete(t.peers, id.peer)
		t.bits[family(id.peer.Addr())][id.peer.Bits()]--
	}
}

func (t *keyTable) covers(addr netip.Addr) bool {
	f := family(addr)
	for bits := addr.BitLen(); bits >= 0; bits-- {
		if t.bits[f][bits] == 0 {
			continue
		}
		p, err := addr.Prefix(bits)
		if err == nil && t.peers[p] > 0 {
			return true
		}
	}
	return false
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}
