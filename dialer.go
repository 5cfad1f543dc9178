package tcpmd5

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
)

// Dialer is a drop-in for [net.Dialer] whose connections sign every segment,
// the SYN first, with the RFC 2385 key for the address dialled. The
// embedded [net.Dialer] keeps its meaning: its ControlContext or Control hook
// runs first, then the key is installed before connect(2). Every connection
// attempt, each address of a Happy Eyeballs race included, gets the key whose
// Peer holds that address with the longest prefix. A key with an Ifindex
// applies only to sockets bound to that VRF device (SO_BINDTODEVICE, set
// in your Control hook), as the kernel signs with it only there; on other
// sockets the Dialer chooses among the remaining keys.
//
// With no Keys and no TTLSecurity, a Dialer dials exactly like
// [net.Dialer]. With keys but none for the destination, Dial fails with
// [ErrNoKey] unless AllowUnsigned is set. Keyed sockets are plain TCP, never
// MPTCP.
type Dialer struct {
	net.Dialer

	// Keys are the secrets shared with the peers this dialer reaches. The
	// first dial checks and indexes them, so that a dial costs the same
	// with 10,000 keys as with one; a dial with another slice (a new one,
	// or the same grown by append) indexes that. An element changed in
	// place is not seen. Like every field of a Dialer, Keys is read by each
	// dial without a lock: assign it only while no dial runs, as with
	// [net.Dialer]'s fields. Keys that change while dials run belong in a
	// KeyChain.
	Keys []Key

	// AOKeys are TCP-AO keys (RFC 5925), indexed as Keys are. A dial
	// installs every AO key whose Peer holds the destination with the
	// longest prefix, and signs with the first of them in AOKeys order,
	// which it also asks the peer to sign with (RNextKeyID); the kernel
	// would otherwise pick the last one added. Where an MD5 key and AO keys
	// both cover the destination, the longer prefix decides; at equal
	// length the dial fails, as a peer is MD5 or AO, never both.
	AOKeys []AOKey

	// KeyChain, if not nil, holds keys that take over from each other on a
	// schedule: each dial signs with the chain's keys of that moment for
	// its destination (the preferred AO key signs the SYN), and each
	// connection is kept in step with the chain (see [KeyChain]). Unlike
	// Keys, a chain's keys change while dials run, safely. A destination
	// that both the chain and Keys or AOKeys cover is an error.
	KeyChain *KeyChain

	// AllowUnsigned dials destinations that no key covers without a
	// signature instead of failing with ErrNoKey.
	AllowUnsigned bool

	// TTLSecurity, when not 0, is the most hops the peer may be away (RFC
	// 5082 GTSM, "ttl-security hops" on routers): the socket sends with TTL
	// and hop limit 255 and drops segments that arrive with less than
	// 256-TTLSecurity, set before connect(2). It works with and without
	// Keys; where the system cannot do it, Dial fails with
	// [ErrTTLSecurityUnsupported].
	TTLSecurity int

	table atomic.Value // *dialTable: Keys checked and indexed, by the first dial that used them
}

// dialTable is a Dialer's Keys, checked and indexed by peer prefix, so that
// a dial finds its key in time independent of their number. It belongs to
// the slice it was built from: the same array and length.
type dialTable struct {
	src   []Key
	aoSrc []AOKey
	keys  keySet // ao.best returns keys in AOKeys order
	err   error  // the first invalid key's

	// hosts holds the plan for each address a host key names, made once by
	// index, so that a dial to a peer with a host key (most dials) costs
	// one map lookup, or a look at a few, where there are at most fewKeys
	// such addresses; nil where interface keys make the plan depend on the
	// socket's VRF.
	hosts map[netip.Addr]dialPlan
	few   []hostPlan

	// control is the Control hook of a dial with a Dialer's table alone,
	// no KeyChain and no interface key, made with the table so that such
	// a dial allocates nothing of its own; it reads the fields of owner,
	// the Dialer that made it (a copy of that Dialer makes its own). Both
	// are nil in a KeyChain's table.
	control func(ctx context.Context, network, address string, c syscall.RawConn) error
	owner   *Dialer
}

// hostPlan is the plan for one address a host key names.
type hostPlan struct {
	addr netip.Addr
	plan dialPlan
}

// dialPlan is what a dial to one destination installs: the MD5 keys the
// kernel chooses among, or the AO keys, the first of which signs; neither
// where no key covers it; err where keys of both kinds cover it alike.
type dialPlan struct {
	md5 []Key
	ao  []AOKey
	err error
}

// planOf returns the plan s gives peer addr on a socket bound to VRF
// l3index (0: none): the longer prefix decides between MD5 and AO keys.
func planOf(s *keySet, addr netip.Addr, l3index int) dialPlan {
	best, aoBest := s.md5.best(addr, l3index), s.ao.best(addr, l3index)
	switch {
	case len(best) > 0 && len(aoBest) > 0 && best[0].Peer.Bits() == aoBest[0].Peer.Bits():
		return dialPlan{err: mixedKeysError(best[0], aoBest[0])}
	case len(aoBest) > 0 && (len(best) == 0 || aoBest[0].Peer.Bits() > best[0].Peer.Bits()):
		return dialPlan{ao: aoBest}
	}
	return dialPlan{md5: best}
}

// index makes what a dial reads of t, once its keys are in.
func (t *dialTable) index() {
	t.hosts, t.few = nil, nil
	if t.keys.interfaces() > 0 {
		return
	}
	t.hosts = make(map[netip.Addr]dialPlan, t.keys.hosts())
	for id := range t.keys.md5.hosts {
		t.hosts[id.peer.Addr()] = planOf(&t.keys, id.peer.Addr(), 0)
	}
	for id := range t.keys.ao.hosts {
		t.hosts[id.peer.Addr()] = planOf(&t.keys, id.peer.Addr(), 0)
	}
	if len(t.hosts) <= fewKeys {
		for addr, p := range t.hosts {
			t.few = append(t.few, hostPlan{addr, p})
		}
		t.hosts = nil
	}
}

// plan returns the plan for peer addr, unmapped, on a socket bound to VRF
// l3index (0: none).
func (t *dialTable) plan(addr netip.Addr, l3index int) dialPlan {
	addr = addr.WithZone("")
	for _, h := range t.few {
		if h.addr == addr {
			return h.plan
		}
	}
	if p, ok := t.hosts[addr]; ok {
		return p
	}
	return planOf(&t.keys, addr, l3index)
}

// keyTable returns the table for d.Keys, building it if d.Keys is another
// slice than the one of the last table, or if that table is another
// Dialer's (d is a copy of the Dialer that built it).
func (d *Dialer) keyTable() *dialTable {
	keys, aoKeys := d.Keys, d.AOKeys
	if t, ok := d.table.Load().(*dialTable); ok && t.owner == d && sameSlice(t.src, keys) && sameSlice(t.aoSrc, aoKeys) {
		return t
	}
	normalized, err := normalizeKeys(keys) // nil on error: the table then holds none
	aoNormalized, aoErr := normalizeAOKeys(aoKeys)
	t := newDialTable(normalized, aoNormalized)
	t.src, t.aoSrc, t.err, t.owner = keys, aoKeys, cmp.Or(err, aoErr), d
	t.control = func(ctx context.Context, network, address string, c syscall.RawConn) error {
		dl := dialing{d: d, table: t}
		return dl.control(ctx, network, address, c)
	}
	d.table.Store(t)
	return t
}

// signs reports whether a dial with t alone signs its attempt to addr, a
// *net.TCPAddr: what the hook does, asked afterwards.
func (t *dialTable) signs(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	p := t.plan(ta.AddrPort().Addr().Unmap(), 0)
	return p.err == nil && len(p.md5)+len(p.ao) > 0
}

// newDialTable returns a table of copies of keys and aoKeys, a later key
// replacing an earlier one with its id, as in the kernel, indexed: every
// table a dial reads, a Dialer's or a KeyChain's, is made here.
func newDialTable(keys []Key, aoKeys []AOKey) *dialTable {
	t := &dialTable{}
	for _, k := range keys {
		t.keys.md5.set(k.clone())
	}
	for _, k := range aoKeys {
		t.keys.ao.set(k.clone())
	}
	t.index()
	return t
}

// socketFamilyOf returns the address family of a socket that a Control
// hook is told has network "tcp4" or "tcp6", and 0, for the kernel to say,
// for any other.
func socketFamilyOf(network string) int {
	switch network {
	case "tcp4":
		return syscall.AF_INET
	case "tcp6":
		return syscall.AF_INET6
	}
	return 0
}

// sameSlice reports whether a and b are the same slice: array and length.
func sameSlice[E any](a, b []E) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Dial connects to the address on the named network, as [net.Dialer.Dial].
// The connection is a *[net.TCPConn].
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialContext connects to the address on the named network using ctx, as
// [net.Dialer.DialContext].
//
// A peer that holds another key for this host, or none, drops our signed
// segments in silence, so such a dial ends in a timeout: the error is then
// a [net.Error] whose Timeout reports true and whose text says what to check.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return d.dial(ctx, network, address, nil)
}

// dial is DialContext from local, if not nil, instead of d.LocalAddr.
func (d *Dialer) dial(ctx context.Context, network, address string, local net.Addr) (net.Conn, error) {
	nd := d.Dialer
	if local != nil {
		nd.LocalAddr = local
	}
	if !d.protects() {
		return nd.DialContext(ctx, network, address)
	}
	if err := checkTCP("dial", network); err != nil {
		return nil, err
	}
	table := d.keyTable()
	var chained *dialTable
	if d.KeyChain != nil {
		chained = d.KeyChain.dialTable()
	}
	err := table.err
	if err == nil {
		err = checkTTLSecurity(d.TTLSecurity)
	}
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	nd.SetMultipathTCP(false)
	control, dl := table.control, (*dialing)(nil)
	if chained != nil || table.keys.interfaces() > 0 {
		// The keys an attempt signs with depend on the chain's moment or
		// on the socket's VRF: this dial keeps its own record of them.
		dl = &dialing{d: d, table: table, chained: chained}
		control = dl.control
	}
	nd.Control, nd.ControlContext = nil, control
	c, err := nd.DialContext(ctx, network, address)
	if err == nil {
		if d.KeyChain != nil && dl != nil && dl.signed.Load() {
			d.KeyChain.track(c.(*net.TCPConn), false)
		}
		return c, nil
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || !oe.Timeout() {
		return nil, err
	}
	signed := table.signs(oe.Addr)
	if dl != nil {
		signed = dl.signed.Load()
	}
	if !signed && d.TTLSecurity == 0 {
		return nil, err
	}
	annotated := *oe
	annotated.Err = &noAnswerError{err: oe.Err, local: nd.LocalAddr, signed: signed, hops: d.TTLSecurity}
	return nil, &annotated
}

// dialing is what the Control hook of a Dialer with keys or TTL security
// reads, and whether it signed a connection attempt (of several, in a
// Happy Eyeballs race, each on its own goroutine): a dial with a KeyChain
// or interface keys keeps one for all its attempts, to read that record;
// any other makes one for each attempt on its stack (dialTable.control).
type dialing struct {
	d              *Dialer
	table, chained *dialTable // the Dialer's keys, its KeyChain's (nil: none)
	signed         atomic.Bool
}

// control is the dial's ControlContext: the caller's hook (the Dialer's
// ControlContext where both are set, as net.Dialer runs it), then TTL
// security, then the keys for the address dialled.
func (dl *dialing) control(ctx context.Context, network, address string, c syscall.RawConn) error {
	var err error
	switch {
	case dl.d.ControlContext != nil:
		err = dl.d.ControlContext(ctx, network, address, c)
	case dl.d.Control != nil:
		err = dl.d.Control(network, address, c)
	}
	if err == nil {
		err = applyTTLSecurity(c, dl.d.TTLSecurity)
	}
	if err == nil {
		err = dl.sign(network, address, c)
	}
	return err
}

// sign installs the keys for address on the socket behind c, about to
// connect, or fails if none covers it and unsigned dials are not allowed.
func (dl *dialing) sign(network, address string, c syscall.RawConn) error {
	table, chained := dl.table, dl.chained
	if table.keys.len() == 0 && chained == nil {
		return nil
	}
	addr, err := dialled(address)
	if err != nil {
		return err
	}
	if chained != nil {
		switch own := table.keys.covers(addr, 0); {
		case own && chained.keys.covers(addr, 0):
			return fmt.Errorf("tcpmd5: both the Dialer's keys and its KeyChain cover %s: give a peer keys in one place", addr)
		case !own:
			table = chained
		}
	}
	l3index := 0
	if table.keys.interfaces() > 0 {
		// The kernel signs with an interface key only on a socket
		// bound to that VRF: choose among the keys that apply here.
		if l3index, err = boundIfindex(c); err != nil {
			return err
		}
	}
	p := table.plan(addr, l3index)
	switch {
	case p.err != nil:
		return p.err
	case len(p.ao) > 0:
		err = signAOKeys(c, socketFamilyOf(network), p.ao)
	case len(p.md5) > 0:
		err = applyKeys(c, socketFamilyOf(network), p.md5)
	case dl.d.AllowUnsigned:
		return nil
	default:
		return noKeyError(&table.keys, addr)
	}
	if err == nil {
		dl.signed.Store(true)
	}
	return err
}

// dialled returns the address, unmapped, of what a Control hook is told
// it dials: "host:port", host an IP literal, in brackets if IPv6. The port
// decides no key, so it is not parsed.
func dialled(address string) (netip.Addr, error) {
	host := address
	if i := strings.LastIndexByte(address, ':'); i >= 0 {
		host = address[:i]
	}
	var addr netip.Addr
	var err error
	switch {
	case len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']':
		addr, err = netip.ParseAddr(host[1 : len(host)-1])
	case strings.IndexByte(host, ':') >= 0:
		err = errors.New("an IPv6 address goes in brackets")
	default:
		addr, err = netip.ParseAddr(host)
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("tcpmd5: dialling %q: %w", address, err)
	}
	return addr.Unmap(), nil
}

// noKeyError says that no key of s covers addr on this socket, and how to
// give it one.
func noKeyError(s *keySet, addr netip.Addr) error {
	if vrf, ok := s.md5.confinedTo(addr); ok {
		return fmt.Errorf("%w %s on this socket: its key is for VRF %d; bind the dialer's socket to that VRF", ErrNoKey, addr, vrf)
	}
	if vrf, ok := s.ao.confinedTo(addr); ok {
		return fmt.Errorf("%w %s on this socket: its AO key is for VRF %d; bind the dialer's socket to that VRF", ErrNoKey, addr, vrf)
	}
	return fmt.Errorf("%w %s: add a Key or AOKey whose Peer holds it, or set AllowUnsigned to dial it unsigned", ErrNoKey, addr)
}

// DialTCP connects to raddr, from laddr if it is valid, like
// [net.Dialer.DialTCP], with every segment signed as [Dialer.DialContext]
// signs them.
func (d *Dialer) DialTCP(ctx context.Context, network string, laddr, raddr netip.AddrPort) (*net.TCPConn, error) {
	if err := checkTCP("dial", network); err != nil {
		return nil, err
	}
	var local net.Addr
	if laddr.IsValid() {
		local = net.TCPAddrFromAddrPort(laddr)
	}
	c, err := d.dial(ctx, network, raddr.String(), local)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// DialUDP is [net.Dialer.DialUDP] for a Dialer without keys or TTL
// security. With them it fails: a key signs TCP segments only, and the
// Dialer never hands out a connection it did not protect.
func (d *Dialer) DialUDP(ctx context.Context, network string, laddr, raddr netip.AddrPort) (*net.UDPConn, error) {
	if err := d.unprotected("DialUDP", network); err != nil {
		return nil, err
	}
	return d.Dialer.DialUDP(ctx, network, laddr, raddr)
}

// DialIP is [net.Dialer.DialIP] for a Dialer without keys or TTL security;
// with them it fails, as [Dialer.DialUDP] does.
func (d *Dialer) DialIP(ctx context.Context, network string, laddr, raddr netip.Addr) (*net.IPConn, error) {
	if err := d.unprotected("DialIP", network); err != nil {
		return nil, err
	}
	return d.Dialer.DialIP(ctx, network, laddr, raddr)
}

// DialUnix is [net.Dialer.DialUnix] for a Dialer without keys or TTL
// security; with them it fails, as [Dialer.DialUDP] does.
func (d *Dialer) DialUnix(ctx context.Context, network string, laddr, raddr *net.UnixAddr) (*net.UnixConn, error) {
	if err := d.unprotected("DialUnix", network); err != nil {
		return nil, err
	}
	return d.Dialer.DialUnix(ctx, network, laddr, raddr)
}

// MultipathTCP reports whether the Dialer's connections may be MPTCP: only
// those of a Dialer without keys or TTL security, as [net.Dialer] allows;
// keyed connections are always plain TCP.
func (d *Dialer) MultipathTCP() bool {
	return !d.protects() && d.Dialer.MultipathTCP()
}

// protects reports whether d has keys or TTL security: then it dials
// plain TCP only, with them.
func (d *Dialer) protects() bool {
	return len(d.Keys) > 0 || len(d.AOKeys) > 0 || d.TTLSecurity != 0 || d.KeyChain != nil
}

// unprotected returns the error of a dial that cannot carry the Dialer's
// keys or TTL security, or nil for a Dialer that has neither.
func (d *Dialer) unprotected(method, network string) error {
	if !d.protects() {
		return nil
	}
	return &net.OpError{Op: "dial", Net: network, Err: fmt.Errorf("tcpmd5: %s cannot carry keys or TTL security, which protect TCP only; use a net.Dialer for %s", method, network)}
}

// noAnswerError is a dial timeout on a signed or TTL-secured connection
// attempt. It keeps the original error for errors.Is and Timeout, and tells
// the operator what such a silence usually means.
type noAnswerError struct {
	err    error
	local  net.Addr
	signed bool
	hops   int
}

func (e *noAnswerError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: no answer", e.err)
	if e.signed {
		src := "this host's source address"
		switch a := e.local.(type) {
		case *net.TCPAddr: // a nil *TCPAddr, or one without an IP, names no address
			if a != nil && a.IP != nil {
				src = a.IP.String()
			}
		case nil:
		default:
			src = a.String()
		}
		fmt.Fprintf(&b, " to a signed SYN; check that the peer holds the same key for %s (it drops what it cannot verify) and that no firewall drops it", src)
	}
	if e.hops != 0 {
		fmt.Fprintf(&b, "; with TTL security, also that the peer sends with TTL 255 from at most %d hops", e.hops)
	}
	return b.String()
}

func (e *noAnswerError) Unwrap() error   { return e.err }
func (e *noAnswerError) Timeout() bool   { return true }
func (e *noAnswerError) Temporary() bool { return true }
