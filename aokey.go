package tcpmd5

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// ErrAOUnsupported reports that this system cannot authenticate TCP
// segments with TCP-AO (RFC 5925): it is not Linux, or the kernel is older
// than 6.7 or was built without CONFIG_TCP_AO.
var ErrAOUnsupported = errors.New("tcpmd5: TCP-AO (RFC 5925) is not supported on this system")

// AOSupported reports whether this system authenticates TCP segments with
// TCP-AO (RFC 5925). It probes the kernel once, with setsockopt(2)
// TCP_AO_ADD_KEY on a throwaway socket, and caches the answer.
func AOSupported() bool { return aoProbeOnce() == nil }

// MaxAOMACLen is the longest MAC an [AOKey] may ask for: with MSS, window
// scale and timestamps, a SYN has room for 16 bytes of TCP-AO MAC.
const MaxAOMACLen = 16

// AOKey is one TCP-AO master key tuple (RFC 5925 section 3.1): the secret
// this host shares with the peers in Peer, the KeyIDs that name it on the
// wire, and the MAC algorithm.
//
// Peer is one host (a /32 or /128 prefix) or a range, as [Key.Peer].
// SendID is the KeyID we sign with, which the peer knows as its RecvID;
// RecvID is the KeyID we verify, the peer's SendID. Algorithm is the
// kernel's name of the MAC: "hmac(sha1)" and "cmac(aes128)" (RFC 5926),
// or another the kernel's crypto API has, such as "hmac(sha256)". MACLen is
// the MAC's length in bytes, 1 to [MaxAOMACLen]; 0 means 12 (96 bits, RFC
// 5926). Secret is 1 to [MaxSecretLen] bytes. Ifindex, when not 0, limits
// the key to peers reached through that VRF. ExcludeOptions leaves the TCP
// options out of the MAC (TCP_AO_KEYF_EXCLUDE_OPT, RFC 5925 section 7.1);
// both ends must agree.
//
// An AOKey's String, GoString and Format never show the secret, and neither
// does any error of this package.
type AOKey struct {
	Peer           netip.Prefix
	SendID         uint8
	RecvID         uint8
	Algorithm      string
	MACLen         int
	Secret         []byte
	Ifindex        int
	ExcludeOptions bool
}

// ParseAOKey returns the AOKey for secret shared with peer, where peer is
// as for [ParseKey] and spec gives the rest in words separated by blanks:
// "send=N recv=N alg=NAME", and optionally "mac=N" and "exclude-options",
// as in "send=1 recv=2 alg=hmac(sha1)". The words are those of the
// command's key files.
func ParseAOKey(peer, spec, secret string) (AOKey, error) {
	base, err := ParseKey(peer, "-")
	if err != nil {
		return AOKey{}, err
	}
	k := AOKey{Peer: base.Peer, Ifindex: base.Ifindex, Secret: []byte(secret)}
	var have struct{ send, recv bool }
	// No error repeats a word: a secret may have strayed into the spec.
	for i, word := range strings.Fields(spec) {
		name, value, _ := strings.Cut(word, "=")
		id := func() (uint8, error) {
			n, err := strconv.ParseUint(value, 10, 8)
			if err != nil {
				return 0, fmt.Errorf("tcpmd5: AO key for %s: %s= wants a KeyID from 0 to 255", base.peerString(), name)
			}
			return uint8(n), nil
		}
		switch {
		case name == "send":
			k.SendID, err = id()
			have.send = true
		case name == "recv":
			k.RecvID, err = id()
			have.recv = true
		case name == "alg":
			k.Algorithm = value
		case name == "mac":
			k.MACLen, err = strconv.Atoi(value)
			if err != nil {
				err = fmt.Errorf("tcpmd5: AO key for %s: mac= wants a MAC length in bytes, 1 to %d", base.peerString(), MaxAOMACLen)
			}
		case word == "exclude-options":
			k.ExcludeOptions = true
		default:
			err = fmt.Errorf("tcpmd5: AO key for %s: word %d (not shown) is none of send=N recv=N alg=NAME mac=N exclude-options", base.peerString(), i+1)
		}
		if err != nil {
			return AOKey{}, err
		}
	}
	if !have.send || !have.recv {
		return AOKey{}, fmt.Errorf("tcpmd5: AO key for %s: give both send=N and recv=N (the KeyIDs we sign and verify with)", base.peerString())
	}
	k, err = k.normalize()
	if err != nil {
		return AOKey{}, err
	}
	return k, nil
}

// normalize checks k and returns it as the kernel will hold it: IPv4 peers
// as 4-byte prefixes, MACLen 12 for 0.
func (k AOKey) normalize() (AOKey, error) {
	peer, err := Key{Peer: k.Peer, Ifindex: k.Ifindex}.normalizePeer()
	if err != nil {
		return AOKey{}, err
	}
	k.Peer = peer.Peer
	switch n := len(k.Secret); {
	case n == 0:
		return AOKey{}, fmt.Errorf("tcpmd5: AO key %s: the secret is empty; give 1 to %d bytes", k.name(), MaxSecretLen)
	case n > MaxSecretLen:
		return AOKey{}, fmt.Errorf("tcpmd5: AO key %s: the secret is %d bytes, longer than the kernel's limit of %d (TCP_AO_MAXKEYLEN)", k.name(), n, MaxSecretLen)
	}
	if k.MACLen == 0 {
		k.MACLen = 12
	}
	if k.MACLen < 0 || k.MACLen > MaxAOMACLen {
		return AOKey{}, fmt.Errorf("tcpmd5: AO key %s: MACLen %d does not fit a SYN's option space; give 1 to %d bytes, or 0 for 12", k.name(), k.MACLen, MaxAOMACLen)
	}
	if k.Algorithm == "" {
		return AOKey{}, fmt.Errorf("tcpmd5: AO key %s: no Algorithm; give the kernel's name of a MAC, such as hmac(sha1) or cmac(aes128)", k.name())
	}
	if len(k.Algorithm) >= aoAlgNameLen {
		return AOKey{}, fmt.Errorf("tcpmd5: AO key %s: the Algorithm (not shown) is longer than the kernel's %d bytes", k.name(), aoAlgNameLen-1)
	}
	for _, c := range k.Algorithm {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '(' || c == ')' || c == '-' || c == '_' || c == ',') {
			return AOKey{}, fmt.Errorf("tcpmd5: AO key %s: the Algorithm (not shown) is not a kernel crypto name such as hmac(sha1)", k.name())
		}
	}
	return k, nil
}

// aoAlgNameLen is the size of the kernel's alg_name field, its NUL included.
const aoAlgNameLen = 64

// name names k's peer and KeyIDs: the form used in this package's errors.
func (k AOKey) name() string {
	return Key{Peer: k.Peer, Ifindex: k.Ifindex}.peerString() + " send " + strconv.Itoa(int(k.SendID)) + " recv " + strconv.Itoa(int(k.RecvID))
}

// String returns the key's peer, KeyIDs, algorithm and MAC length with the
// secret redacted, as in
// "192.0.2.1 send 1 recv 2 hmac(sha1) mac 12 secret:<redacted>".
func (k AOKey) String() string {
	s := k.name() + " " + k.Algorithm
	if k.MACLen != 0 {
		s += " mac " + strconv.Itoa(k.MACLen)
	}
	if k.ExcludeOptions {
		s += " exclude-options"
	}
	return s + " secret:<redacted>"
}

// GoString returns a Go-syntax form of the key with the secret redacted.
func (k AOKey) GoString() string {
	peer := "netip.Prefix{}"
	if k.Peer.IsValid() {
		peer = fmt.Sprintf("netip.MustParsePrefix(%q)", k.Peer.String())
	}
	return fmt.Sprintf("tcpmd5.AOKey{Peer:%s, SendID:%d, RecvID:%d, Algorithm:%q, MACLen:%d, Secret:<redacted>, Ifindex:%d, ExcludeOptions:%t}",
		peer, k.SendID, k.RecvID, k.Algorithm, k.MACLen, k.Ifindex, k.ExcludeOptions)
}

// Format implements [fmt.Formatter] so that no verb can print the secret:
// %#v prints [AOKey.GoString], every other verb [AOKey.String].
func (k AOKey) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, k.GoString())
		return
	}
	fmt.Fprint(f, k.String())
}

// AOStats is what the kernel reports of one TCP-AO connection
// (getsockopt(2) TCP_AO_INFO).
type AOStats struct {
	Current, RNext uint8 // the SendID we sign with, and the RecvID we ask the peer for
	Required       bool  // segments without TCP-AO are dropped even from peers no key covers
	AcceptICMPs    bool  // ICMP errors that could reset the connection are accepted
	// Segments: verified; failed verification; named a KeyID we hold no
	// key for; arrived without TCP-AO where it was required; and ICMP
	// errors ignored.
	Good, Bad, KeyNotFound, AORequired, DroppedICMPs uint64
}

// AOControl is [Control] for TCP-AO keys: it returns a function of the
// shape of [net.ListenConfig.Control] and [net.Dialer.Control] that
// installs keys on the socket before bind(2) and connect(2)
// (setsockopt(2) TCP_AO_ADD_KEY), all of them or none. Where several keys
// match a destination, the first of them signs the SYN: the kernel signs
// with the key added last, so AOControl adds them last to first. Compose
// it into hooks you already have, beside [Control] for MD5 peers;
// [ListenConfig] and [Dialer] do that for you. The socket must be plain
// TCP, as for [Control].
func AOControl(keys ...AOKey) func(network, address string, c syscall.RawConn) error {
	keys, err := normalizeAOKeys(keys)
	slices.Reverse(keys)
	return func(network, address string, c syscall.RawConn) error {
		if err != nil {
			return err
		}
		return applyAOKeys(c, 0, keys)
	}
}

// AddAOKey adds k to the TCP socket behind c, a live connection (a
// *net.TCPConn from Accept or Dial) or any other TCP socket, with
// setsockopt(2) TCP_AO_ADD_KEY. A key change on a live connection starts
// here, on both ends; see [SetAORNext].
func AddAOKey(c syscall.Conn, k AOKey) error {
	k, err := k.normalize()
	if err != nil {
		return err
	}
	rc, err := rawConn(c, "AddAOKey")
	if err != nil {
		return err
	}
	return addAOKey(rc, 0, k)
}

// RemoveAOKey deletes the key of the socket behind c that matches k's Peer,
// SendID, RecvID and Ifindex (setsockopt(2) TCP_AO_DEL_KEY); one that is
// not there is not an error. The kernel refuses to delete the key a
// connection signs with or asks the peer for: move both away first.
func RemoveAOKey(c syscall.Conn, k AOKey) error {
	peer, err := Key{Peer: k.Peer, Ifindex: k.Ifindex}.normalizePeer()
	if err != nil {
		return err
	}
	k.Peer = peer.Peer
	rc, err := rawConn(c, "RemoveAOKey")
	if err != nil {
		return err
	}
	return removeAOKey(rc, 0, k)
}

// SetAOCurrent makes the connection behind c sign with its key of SendID
// sendID now (TCP_AO_INFO set_current). The peer's RNextKeyID still wins:
// the kernel switches to whichever key the peer's next segment asks for, so
// a key change is driven by [SetAORNext] on both ends.
func SetAOCurrent(c syscall.Conn, sendID uint8) error {
	rc, err := rawConn(c, "SetAOCurrent")
	if err != nil {
		return err
	}
	return controlErr(rc, func(fd int) error { return aoSetCurrent(fd, sendID) })
}

// SetAORNext makes the connection behind c ask the peer to sign with its key
// of RecvID recvID (TCP_AO_INFO set_rnext, sent as RNextKeyID on every
// segment). The hitless key change of RFC 5925 section 7.3: both ends add
// the new key ([AddAOKey]), each asks for it with SetAORNext, each kernel
// follows the other's request, and once [AOInfo] shows the new key current
// on both, each removes the old one ([RemoveAOKey]).
func SetAORNext(c syscall.Conn, recvID uint8) error {
	rc, err := rawConn(c, "SetAORNext")
	if err != nil {
		return err
	}
	return controlErr(rc, func(fd int) error { return aoSetRNext(fd, recvID) })
}

// AOInfo returns the current and RNext KeyIDs of the connection behind c and
// its segment counters (getsockopt(2) TCP_AO_INFO).
func AOInfo(c syscall.Conn) (AOStats, error) {
	rc, err := rawConn(c, "AOInfo")
	if err != nil {
		return AOStats{}, err
	}
	return control(rc, aoGetInfo)
}
