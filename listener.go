package tcpmd5

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
// When the keys are more than one socket should hold (128 host keys, or
// fewer if net.core.optmem_max is small), Listen spreads them over a group
// of SO_REUSEPORT sockets bound to the same address, each with its share of
// the keys before it listens; see [Listener].
func (lc *ListenConfig) Listen(ctx context.Context, network, address string) (*Listener, error) {
	if err := checkTCP("listen", network); err != nil {
		return nil, err
	}
	keys, err := normalizeKeys(lc.Keys)
	var aoKeys []AOKey
	if err == nil {
		aoKeys, err = normalizeAOKeys(lc.AOKeys)
	}
	if err == nil {
		err = checkTTLSecurity(lc.TTLSecurity)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	l := &Listener{allowUnsigned: lc.AllowUnsigned, network: network, cfg: lc.ListenConfig}
	l.cfg.SetMultipathTCP(false)
	if hops := lc.TTLSecurity; hops != 0 {
		l.cfg.Control = chain(l.cfg.Control, func(_, _ string, c syscall.RawConn) error { return applyTTLSecurity(c, hops) })
	}
	for _, k := range keys { // a later key replaces an earlier one, as in the kernel
		l.keys.set(k.clone())
	}
	for _, k := range aoKeys {
		if md5, ok := l.keys.overlapping(k.Peer, k.Ifindex); ok {
			return nil, &net.OpError{Op: "listen", Net: network, Err: mixedKeysError(md5, k)}
		}
		l.aoKeys.set(k.clone())
	}
	l.keyed, l.aoKeyed = len(keys) > 0, len(aoKeys) > 0
	hosts := len(l.keys.hosts) + len(l.aoKeys.hosts)
	_, port, _ := net.SplitHostPort(address)
	for n, tries := shardsFor(&l.keys, &l.aoKeys), 1; ; tries++ {
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
	l.first = l.shards[0]
	l.conns = make(chan accepted)
	l.done = make(chan struct{})
	l.deadline = newDeadline()
	for _, s := range l.shards {
		l.acceptFrom(s)
	}
	return l, nil
}

// ListenPacket is [net.ListenConfig.ListenPacket] for a configuration
// without keys or TTL security. With them it fails: a key signs TCP
// segments only, and a ListenConfig never hands out a socket it did not
// protect.
func (lc *ListenConfig) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	if len(lc.Keys) > 0 || len(lc.AOKeys) > 0 || lc.TTLSecurity != 0 {
		return nil, &net.OpError{Op: "listen", Net: network, Err: fmt.Errorf("tcpmd5: ListenPacket cannot carry TCP MD5 or AO keys or TTL security, which protect TCP only; use Listen, or a net.ListenConfig for %s", network)}
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
// key would be a socket's 129th, or the socket is full, the Listener adds
// another socket bound to the same address, in a SO_REUSEPORT group, and
// attaches a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that sends each
// SYN to the socket holding the key for its source address. Keys for a single host
// live on one socket; prefix keys live on every socket and count against
// each one's room. Accept takes connections from all sockets, Addr stays the
// same, and Close closes them all.
//
// Every socket of the group, the first included, has SO_REUSEPORT set, so
// another socket of the same user (a second instance of a daemon, say) can
// join the group by binding the same address. The program picks sockets by
// their position in the group, in the order they joined, and a foreign
// socket comes after the Listener's own, where the program never steers: it
// receives no SYN. The Listener therefore grows its group only while no
// other socket is bound to its address, which it counts in /proc/net/tcp
// (or tcp6) before each new socket starts receiving SYNs; with a foreign
// socket there, its keys stay on the sockets it has, up to what their
// option memory holds. A socket bound to the address before Listen makes
// Listen fail (EADDRINUSE).
type Listener struct {
	first         *shard // the first socket, whose address is the listener's
	allowUnsigned bool
	refused       atomic.Uint64

	mu      sync.RWMutex  // guards what follows and serializes changes to the sockets' keys
	keys    keyTable[Key] // every key, with its secret
	keyed   bool          // an MD5 key was ever installed: only then can a connection be signed with one
	aoKeys  keyTable[AOKey]
	aoKeyed bool     // an AO key was ever installed
	shards  []*shard // the group, in the order the sockets joined it
	steered bool     // the steering program is attached to the group
	closed  bool
	cfg     net.ListenConfig // makes the sockets: the caller's, with MPTCP off
	network string
	address string // the first socket's, which the others bind too

	// One goroutine per socket accepts and sends to conns; Accept takes
	// from conns until done or the deadline.
	conns    chan accepted
	done     chan struct{} // closed by Close
	deadline *deadline
}

// accepted is a connection, or an error, from one socket of the group.
type accepted struct {
	c   *net.TCPConn
	s   *shard
	err error
}

var _ net.Listener = (*Listener)(nil)

// Accept waits for and returns the next connection, a *[net.TCPConn]: one
// whose handshake the kernel verified with a key, or, with AllowUnsigned,
// an unsigned one from a peer that no key covers. Any other connection is
// closed with a reset and counted, and Accept waits for the next one. The
// kernel says whether a connection was signed (it copies the key to the
// connection at the handshake), so an unsigned handshake that completed
// before SetKey covered its peer is never handed over as signed.
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
		a := l.next()
		if a.err != nil {
			return nil, a.err
		}
		if l.admit(a.s, a.c) {
			return a.c, nil
		}
		l.refused.Add(1)
		_ = a.c.SetLinger(0)
		a.c.Close()
	}
}

// next returns the next connection from any socket of the group, or an
// error once the listener is closed or the deadline has passed.
func (l *Listener) next() accepted {
	expired := l.deadline.wait()
	select { // a closed listener or a past deadline wins over a waiting connection
	case <-l.done:
		return accepted{err: l.opError(net.ErrClosed)}
	case <-expired:
		return accepted{err: l.opError(os.ErrDeadlineExceeded)}
	default:
	}
	select {
	case a := <-l.conns:
		return a
	case <-l.done:
		return accepted{err: l.opError(net.ErrClosed)}
	case <-expired:
		return accepted{err: l.opError(os.ErrDeadlineExceeded)}
	}
}

// opError is the error of every failed Accept, as [net.TCPListener]'s: Op
// "accept", the network the listener was made with, its address.
func (l *Listener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: l.network, Addr: l.Addr(), Err: err}
}

// acceptFrom starts the goroutine that accepts on s for Accept until the
// socket is closed.
func (l *Listener) acceptFrom(s *shard) {
	go func() {
		for {
			c, err := s.ln.AcceptTCP()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			a := accepted{c: c, s: s}
			if err != nil {
				var oe *net.OpError
				if errors.As(err, &oe) {
					err = oe.Err
				}
				a.err = l.opError(err)
			}
			select {
			case l.conns <- a:
			case <-l.done:
				if c != nil {
					c.Close()
				}
				return
			}
		}
	}()
}

// admit reports whether Accept hands over connection c that socket s
// accepted: if the kernel verified its handshake with a key, which it then
// copied to c, or if c is unsigned, no key covers its peer now and unsigned
// peers are allowed. A key covers the peer when its prefix holds the peer's
// address and, for an interface key, c came through that key's VRF, as the
// kernel matches them. Whatever cannot be read is refused.
//
// Whether c holds a key is read from the kernel, not from the keys the
// listener holds now: a connection that completed its handshake unsigned
// before SetKey covered its peer stays unsigned in the accept queue.
func (l *Listener) admit(s *shard, c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	signed := false
	if l.aoKeyed { // else nothing could have signed it, and no syscall need say so
		if signed, err = acceptedAO(rc); err != nil {
			return false
		}
	}
	if l.keyed && !signed {
		if signed, err = acceptedSigned(s.rc, rc, s.keys.len(), s.aoMem); err != nil {
			return false
		}
	}
	if signed || !l.allowUnsigned {
		return signed
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return false
	}
	addr, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	l3index := 0
	if l.keys.interfaces > 0 || l.aoKeys.interfaces > 0 {
		if l3index, err = boundIfindex(rc); err != nil {
			return false
		}
	}
	return !l.keys.covers(addr, l3index) && !l.aoKeys.covers(addr, l3index) // covers unmaps a v4-mapped peer
}

// RefusedUnsigned returns how many connections Accept has closed because no
// installed key covered their peer.
func (l *Listener) RefusedUnsigned() uint64 { return l.refused.Load() }

// SetKey installs k on the live listener, or replaces the secret of the key
// with the same Peer and Ifindex, for handshakes that start afterwards. A
// host key costs one setsockopt(2) call on the socket that holds its peer,
// however many keys are installed; a prefix key costs one on every socket
// of the group; and a key that finds its socket full grows the group first,
// which moves some host keys to the new socket (see [Listener]). It returns
// the kernel's ENOMEM only when growing cannot help, such as for a prefix
// key on a socket holding nothing but prefix keys.
func (l *Listener) SetKey(k Key) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("tcpmd5: key for %s: %w", k.peerString(), net.ErrClosed)
	}
	if ao, ok := l.aoKeys.overlapping(k.Peer, k.Ifindex); ok {
		return mixedKeysError(k, ao)
	}
	_, installed := l.keys.get(k.id())
	if err := l.place(k.id(), installed, func() (*shard, error) { return l.install(k) }); err != nil {
		return err
	}
	l.keys.set(k.clone())
	l.keyed = true
	return nil
}

// place makes room for a key of either kind, then installs it with
// install, which returns the socket that refused it. A new host key whose
// socket holds keysPerSocket keys grows the group first, at most doubling
// it (by then every socket has been split once); the cap is for speed: if
// growing fails, a socket with room in its option memory still takes the
// key. A socket whose option memory is full makes room the same way, if
// growing can move host keys off it.
func (l *Listener) place(id keyID, installed bool, install func() (*shard, error)) error {
	n := len(l.shards)
	for grown := 0; grown < n && l.crowded(id, installed); grown++ {
		if l.grow() != nil {
			break
		}
	}
	for grown := 0; ; grown++ {
		full, err := install()
		if err == nil {
			return nil
		}
		if !keysFull(err) || len(full.keys.hosts)+len(full.aoKeys.hosts) == 0 || grown >= n {
			return err
		}
		if gerr := l.grow(); gerr != nil {
			return fmt.Errorf("%w; adding a socket to the listener's group failed too: %w", err, gerr)
		}
	}
}

// RemoveKey deletes the key for k.Peer and k.Ifindex from the listener; the
// secret is ignored. Removing a key that is not installed is not an error.
// Connections already accepted keep their keys.
func (l *Listener) RemoveKey(k Key) error {
	k, err := k.normalizePeer()
	if err != nil {
		return err
	}
	id := k.id()
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.keys.get(id); !ok {
		return nil
	}
	for _, s := range l.shards {
		if _, ok := s.keys.get(id); ok {
			if err := removeKey(s.rc, s.family, k); err != nil {
				return err
			}
			s.keys.remove(id)
		}
	}
	l.keys.remove(id)
	return nil
}

// Keys returns copies of the keys installed now, ordered by peer and
// interface.
func (l *Listener) Keys() []Key {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]Key, 0, l.keys.len())
	for k := range l.keys.all() {
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
func (l *Listener) Addr() net.Addr { return l.first.ln.Addr() }

// Close stops listening on every socket of the group. Connections already
// accepted stay open.
func (l *Listener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return l.first.ln.Close() // the net package's error for a second Close
	}
	l.closed = true
	err := l.closeShards()
	close(l.done)
	return err
}

// SetDeadline sets the deadline for Accept, as [net.TCPListener.SetDeadline]:
// a zero t means none, and a t in the past makes waiting Accept calls
// return an error that wraps [os.ErrDeadlineExceeded].
func (l *Listener) SetDeadline(t time.Time) error {
	l.deadline.set(t)
	return nil
}

// deadline is a deadline that no single socket holds, Accept's over the
// group: a channel that is closed once the deadline has passed, replaced
// when the deadline moves, in the manner of net's pipe deadlines.
type deadline struct {
	mu      sync.Mutex
	timer   *time.Timer
	expired chan struct{}
}

func newDeadline() *deadline { return &deadline{expired: make(chan struct{})} }

// set moves the deadline to t; the zero t means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.expired // the timer fired: wait until its function has closed it
	}
	d.timer = nil
	select {
	case <-d.expired:
		d.expired = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.expired)
		return
	}
	expired := d.expired
	d.timer = time.AfterFunc(wait, func() { close(expired) })
}

// wait returns a channel that is closed when the deadline passes.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}

// SyscallConn returns the raw listening socket, as
// [net.TCPListener.SyscallConn]: the first socket of the group. Keys set on
// it directly bypass [Listener.Keys] and the Accept policy.
func (l *Listener) SyscallConn() (syscall.RawConn, error) { return l.first.ln.SyscallConn() }
