package tcpmd5

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// MaxSecretLen is the longest secret the kernel accepts, TCP_MD5SIG_MAXKEYLEN
// in setsockopt(2) terms.
const MaxSecretLen = 80

// ErrMD5Unsupported reports that this system cannot sign TCP segments with
// RFC 2385 MD5 signatures: it is not Linux, the kernel was built without
// CONFIG_TCP_MD5SIG, or a sandbox such as gVisor does not implement the
// option. Every error that comes from a missing kernel feature matches it with
// [errors.Is].
var ErrMD5Unsupported = errors.New("tcpmd5: TCP MD5 signatures (RFC 2385) are not supported on this system")

// ErrNoKey reports that a [Dialer] with keys was asked to reach a destination
// that none of its keys covers, and AllowUnsigned was not set.
var ErrNoKey = errors.New("tcpmd5: no key covers the destination")

// Key is one RFC 2385 key: the secret this host shares with the peers in Peer.
//
// Peer is one host (a /32 or /128 prefix) or a range of hosts, which the
// kernel matches longest prefix first (TCP_MD5SIG_EXT with
// TCP_MD5SIG_FLAG_PREFIX, Linux 4.13+). Secret is 1 to [MaxSecretLen] bytes.
// Ifindex, when not 0, limits the key to peers reached through that interface
// (TCP_MD5SIG_FLAG_IFINDEX, Linux 5.6+); the kernel takes only VRF (L3
// master) interfaces there.
//
// A Key's String, GoString and Format never show the secret, and neither does
// any error of this package.
type Key struct {
	Peer    netip.Prefix
	Secret  []byte
	Ifindex int
}

// ParseKey returns the Key for secret shared with peer, where peer is an IP
// address ("192.0.2.1", "2001:db8::1"), a prefix ("192.0.2.0/24",
// "2001:db8::/64") or an address with a zone that names a VRF device
// ("fe80::1%blue"), which becomes the key's Ifindex. A zone that names a
// plain interface is an error: the kernel confines a key to a VRF only, and
// matches a link-local peer on every other interface alike, so write the
// address without a zone.
//
// Its errors never repeat a peer that does not parse, nor a zone that names
// no interface: either may be a secret written in the wrong place.
func ParseKey(peer, secret string) (Key, error) {
	var k Key
	addr, zone, hasZone := strings.Cut(peer, "%")
	if strings.Contains(addr, "/") {
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			return Key{}, errBadPeer(peer)
		}
		if hasZone {
			return Key{}, fmt.Errorf("tcpmd5: peer %s: a zone goes with a single address, not a prefix", p)
		}
		k.Peer = p
	} else {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return Key{}, errBadPeer(peer)
		}
		k.Peer = netip.PrefixFrom(a, a.BitLen())
	}
	if hasZone {
		idx, err := zoneIndex(zone)
		if err != nil {
			return Key{}, fmt.Errorf("tcpmd5: peer %s: %w", k.Peer.Addr(), err)
		}
		k.Ifindex = idx
	}
	k.Secret = []byte(secret)
	k, err := k.normalize()
	if err != nil {
		return Key{}, err
	}
	return k, nil
}

// errBadPeer says that peer is no address or prefix, without repeating it.
func errBadPeer(peer string) error {
	return fmt.Errorf("tcpmd5: the peer (%d bytes, not shown) is not an IP address or prefix such as 10.0.0.0/8", len(peer))
}

// zoneIndex returns the interface index a zone names, a number or the name
// of an interface on this host, which must be a VRF device.
func zoneIndex(zone string) (int, error) {
	var ifi *net.Interface
	var err error
	if zone == "" {
		return 0, errors.New("the zone after % is empty; name a VRF device, as in fe80::1%blue")
	}
	if n, nerr := strconv.Atoi(zone); nerr == nil {
		if n <= 0 || n > math.MaxInt32 {
			return 0, fmt.Errorf("interface index %d is not a valid interface", n)
		}
		if ifi, err = net.InterfaceByIndex(n); err != nil {
			return 0, fmt.Errorf("no interface with index %d on this host", n)
		}
	} else if ifi, err = net.InterfaceByName(zone); err != nil {
		return 0, errors.New("the zone names no interface on this host (it is not shown, in case it is a secret)")
	}
	if err := vrfDevice(ifi.Index); err != nil {
		return 0, fmt.Errorf("interface %s is not a VRF device, the only kind a key is confined to; drop the zone", ifi.Name)
	}
	return ifi.Index, nil
}

// normalize checks k and returns it in the form the rest of the package
// relies on: IPv4 peers as 4-byte prefixes, even when given v4-mapped.
func (k Key) normalize() (Key, error) {
	k, err := k.normalizePeer()
	if err != nil {
		return Key{}, err
	}
	switch n := len(k.Secret); {
	case n == 0:
		return Key{}, fmt.Errorf("tcpmd5: key for %s: the secret is empty; give 1 to %d bytes", k.peerString(), MaxSecretLen)
	case n > MaxSecretLen:
		return Key{}, fmt.Errorf("tcpmd5: key for %s: the secret is %d bytes, longer than the kernel's limit of %d", k.peerString(), n, MaxSecretLen)
	}
	return k, nil
}

// normalizePeer checks and normalizes what identifies k, its Peer and
// Ifindex, and leaves the secret alone.
func (k Key) normalizePeer() (Key, error) {
	if !k.Peer.IsValid() {
		return Key{}, fmt.Errorf("tcpmd5: key has no valid Peer prefix; set a host such as 192.0.2.1/32 or a range such as 10.0.0.0/8")
	}
	if k.Peer.Addr().Zone() != "" {
		return Key{}, fmt.Errorf("tcpmd5: key for %s: Peer carries a zone; put the interface in Ifindex", k.Peer)
	}
	if k.Peer != k.Peer.Masked() {
		return Key{}, fmt.Errorf("tcpmd5: key for %s: the prefix has host bits set; did you mean %s?", k.Peer, k.Peer.Masked())
	}
	if k.Peer.Addr().Is4In6() && k.Peer.Bits() >= 96 {
		k.Peer = netip.PrefixFrom(k.Peer.Addr().Unmap(), k.Peer.Bits()-96)
	}
	switch {
	case k.Ifindex < 0:
		return Key{}, fmt.Errorf("tcpmd5: key for %s: Ifindex %d is negative; use 0 for any interface", k.Peer, k.Ifindex)
	case k.Ifindex > math.MaxInt32:
		return Key{}, fmt.Errorf("tcpmd5: key for %s: Ifindex %d is larger than any interface index", k.Peer, k.Ifindex)
	}
	return k, nil
}

// normalizeKeys checks every key and returns normalized copies.
func normalizeKeys(keys []Key) ([]Key, error) { return normalizeAll(keys, Key.normalize) }

// normalizeAll returns normalized copies of keys, or the first error.
func normalizeAll[K any](keys []K, normalize func(K) (K, error)) ([]K, error) {
	out := make([]K, len(keys))
	for i, k := range keys {
		nk, err := normalize(k)
		if err != nil {
			return nil, err
		}
		out[i] = nk
	}
	return out, nil
}

// peerString names the peers a key covers, its interface included: the form
// used in this package's errors.
func (k Key) peerString() string {
	if !k.Peer.IsValid() {
		return "<no peer>"
	}
	s := k.Peer.String()
	if k.Peer.IsSingleIP() {
		s = k.Peer.Addr().String()
	}
	if k.Ifindex != 0 {
		s += "%" + strconv.Itoa(k.Ifindex)
	}
	return s
}

// String returns the key's peer and interface with the secret redacted, as in
// "192.0.2.1 secret:<redacted>"; a Key without a Peer prints as
// "<no peer> secret:<redacted>".
func (k Key) String() string {
	return k.peerString() + " secret:<redacted>"
}

// GoString returns a Go-syntax form of the key with the secret redacted.
func (k Key) GoString() string {
	if !k.Peer.IsValid() {
		return fmt.Sprintf("tcpmd5.Key{Peer:netip.Prefix{}, Secret:<redacted>, Ifindex:%d}", k.Ifindex)
	}
	return fmt.Sprintf("tcpmd5.Key{Peer:netip.MustParsePrefix(%q), Secret:<redacted>, Ifindex:%d}", k.Peer.String(), k.Ifindex)
}

// Format implements [fmt.Formatter] so that no verb, %x and %q included, can
// print the secret: %#v prints [Key.GoString], every other verb [Key.String].
func (k Key) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, k.GoString())
		return
	}
	fmt.Fprint(f, k.String())
}

// clone returns k with its own copy of the secret.
func (k Key) clone() Key {
	k.Secret = append([]byte(nil), k.Secret...)
	return k
}

// Supported reports whether this system signs TCP segments with RFC 2385
// keys. The first call probes the kernel by installing and deleting a key on
// a throwaway socket (setsockopt(2) TCP_MD5SIG); later calls return the
// cached answer.
func Supported() bool { return probeOnce() == nil }

var probeOnce = sync.OnceValue(probe)

// Control returns a function of the shape of [net.ListenConfig.Control] and
// [net.Dialer.Control] that installs keys on the socket before bind(2) and
// connect(2), so that the handshake is signed. Compose it into hooks you
// already have; [ListenConfig] and [Dialer] do that for you.
//
// If any key cannot be installed, the function removes the ones it installed
// and returns the error, and the net package closes the socket. The socket
// must be plain TCP: MPTCP sockets, the default of Go 1.24+ listeners, refuse
// the option; call SetMultipathTCP(false) on the [net.ListenConfig].
func Control(keys ...Key) func(network, address string, c syscall.RawConn) error {
	keys, err := normalizeKeys(keys)
	return func(network, address string, c syscall.RawConn) error {
		if err != nil {
			return err
		}
		return applyKeys(c, 0, keys)
	}
}

// checkTCP refuses networks other than TCP's, as the net package does, with
// the error of operation op ("dial", "listen").
func checkTCP(op, network string) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
		return nil
	}
	return &net.OpError{Op: op, Net: network, Err: net.UnknownNetworkError(network)}
}

// hook is the shape of [net.ListenConfig.Control] and [net.Dialer.Control].
type hook = func(network, address string, c syscall.RawConn) error

// chain returns a hook that runs user, the caller's own (may be nil), then
// each of ours in order, and stops at the first error.
func chain(user hook, ours ...hook) hook {
	return func(network, address string, c syscall.RawConn) error {
		if user != nil {
			if err := user(network, address, c); err != nil {
				return err
			}
		}
		for _, h := range ours {
			if err := h(network, address, c); err != nil {
				return err
			}
		}
		return nil
	}
}

// SetKeys installs keys on a TCP socket made elsewhere, such as an inherited
// file descriptor or a socket from systemd activation. Keys set on a
// listening socket sign the handshakes that follow.
//
// On a connected socket, SetKeys changes the keys of that connection only:
// segments sent after it returns are signed with the new key, and segments
// received must carry a signature made with it. Both ends must call it while
// no data is in flight: then an unsigned connection becomes signed, and a
// signed one takes the new secret, with no segment lost. If only one end
// does, each end drops the other's segments in silence (counted as
// TCPMD5NotFound, TCPMD5Unexpected or TCPMD5Failure) and the connection
// stalls; once the other end holds the same key, the retransmissions get
// through and the connection resumes, unless it has timed out by then.
//
// SetKeys checks every key before the first setsockopt(2) call, then
// installs them in order and stops at the first the kernel refuses. It
// removes none of those it installed: the kernel cannot give back a secret
// that a key replaced, so deleting the new key would leave that peer with
// no key at all. After a failure, the keys before the refused one are
// installed, with their new secrets, and the refused one and those after it
// are as they were; the error names the refused key and how many went in.
func SetKeys(c syscall.Conn, keys ...Key) error {
	keys, err := normalizeKeys(keys)
	if err != nil {
		return err
	}
	rc, err := rawConn(c, "SetKeys")
	if err != nil {
		return err
	}
	n, err := installEach(rc, keys)
	if err != nil && n > 0 {
		return fmt.Errorf("%w (the %d keys before it are installed, with their new secrets)", err, n)
	}
	return err
}

// rawConn returns the raw socket behind c for the function named fn.
func rawConn(c syscall.Conn, fn string) (syscall.RawConn, error) {
	if c == nil {
		return nil, fmt.Errorf("tcpmd5: %s needs a socket, got nil", fn)
	}
	if v := reflect.ValueOf(c); v.Kind() == reflect.Pointer && v.IsNil() {
		return nil, fmt.Errorf("tcpmd5: %s needs a socket, got a nil %T", fn, c)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tcpmd5: %w", err)
	}
	return rc, nil
}
