package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
)

// The loopback addresses of the measurements: listeners on Server, dialers
// from Client.
var (
	Server = netip.MustParseAddr("127.6.0.1")
	Client = netip.MustParseAddr("127.6.1.1")
)

// secret is the fake secret every measurement uses; the baseline and tcpmd5
// hold the same one, so either side can talk to the other.
const secret = "bench-fake-secret"

// ClientKey is the key a listener holds for the client.
var ClientKey = tcpmd5.Key{Peer: netip.PrefixFrom(Client, 32), Secret: []byte(secret)}

// serverKey is the key a dialer holds for the server.
var serverKey = tcpmd5.Key{Peer: netip.PrefixFrom(Server, 32), Secret: []byte(secret)}

// ListenerKeys returns n keys for a listening socket: the client's key
// first, installed first and so last in the kernel's list, then n-1 keys for
// hosts in 127.6.200.0/22 that never connect.
func ListenerKeys(n int) []tcpmd5.Key {
	keys := make([]tcpmd5.Key, 0, n)
	if n > 0 {
		keys = append(keys, ClientKey)
	}
	for i := 1; i < n; i++ {
		a := netip.AddrFrom4([4]byte{127, 6, byte(200 + i>>8), byte(i)})
		keys = append(keys, tcpmd5.Key{Peer: netip.PrefixFrom(a, 32), Secret: []byte(secret)})
	}
	return keys
}

// Listener is a listening socket of one variant whose keys can change.
type Listener interface {
	net.Listener
	SetKey(tcpmd5.Key) error
	RemoveKey(tcpmd5.Key) error
}

// Variant is one way of making TCP sockets.
type Variant struct {
	Name string
	// Listen listens on Server, on a port the kernel picks, with keys
	// installed before listen(2). The plain variant takes no keys.
	Listen func(keys []tcpmd5.Key) (Listener, error)
	// Dial connects from Client to addr; the MD5 variants sign with the
	// server's key.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Variants returns the variants by name, in the order of names.
func Variants(names ...string) ([]Variant, error) {
	vs := make([]Variant, 0, len(names))
	for _, n := range names {
		switch n {
		case Plain:
			vs = append(vs, plainVariant())
		case TCPMD5:
			vs = append(vs, tcpmd5Variant())
		case XSys:
			vs = append(vs, xsysVariant())
		case TCPAO:
			vs = append(vs, tcpAOVariant())
		case XSysAO:
			vs = append(vs, xsysAOVariant())
		default:
			return nil, fmt.Errorf("bench: no variant %q; choose from %v and %v", n, VariantNames, AOVariantNames)
		}
	}
	return vs, nil
}

var (
	serverAddr = net.JoinHostPort(Server.String(), "0")
	clientAddr = &net.TCPAddr{IP: Client.AsSlice()}
)

func plainVariant() Variant {
	d := &net.Dialer{LocalAddr: clientAddr}
	d.SetMultipathTCP(false)
	return Variant{
		Name: Plain,
		Listen: func(keys []tcpmd5.Key) (Listener, error) {
			if len(keys) > 0 {
				return nil, errors.New("bench: the plain variant takes no keys")
			}
			var lc net.ListenConfig
			lc.SetMultipathTCP(false)
			ln, err := lc.Listen(context.Background(), "tcp4", serverAddr)
			if err != nil {
				return nil, err
			}
			return plainListener{ln.(*net.TCPListener)}, nil
		},
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
	}
}

type plainListener struct{ *net.TCPListener }

func (plainListener) SetKey(tcpmd5.Key) error {
	return errors.New("bench: the plain variant takes no keys")
}

func (plainListener) RemoveKey(tcpmd5.Key) error {
	return errors.New("bench: the plain variant takes no keys")
}

func tcpmd5Variant() Variant {
	d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{serverKey}}
	d.LocalAddr = clientAddr
	return Variant{
		Name: TCPMD5,
		Listen: func(keys []tcpmd5.Key) (Listener, error) {
			lc := tcpmd5.ListenConfig{Keys: keys}
			return lc.Listen(context.Background(), "tcp4", serverAddr)
		},
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
	}
}

// The baseline: what a careful programmer writes by hand with x/sys, plain
// TCP sockets and a Control hook that calls setsockopt(2) TCP_MD5SIG for
// each key, IPv4 hosts only.

func xsysVariant() Variant {
	d := &net.Dialer{LocalAddr: clientAddr, Control: xsysControl([]tcpmd5.Key{serverKey})}
	d.SetMultipathTCP(false)
	return Variant{
		Name: XSys,
		Listen: func(keys []tcpmd5.Key) (Listener, error) {
			lc := net.ListenConfig{Control: xsysControl(keys)}
			lc.SetMultipathTCP(false)
			ln, err := lc.Listen(context.Background(), "tcp4", serverAddr)
			if err != nil {
				return nil, err
			}
			return xsysListener{ln.(*net.TCPListener)}, nil
		},
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
	}
}

func xsysControl(keys []tcpmd5.Key) func(network, address string, c syscall.RawConn) error {
	return controlEach(keys, xsysSetKey)
}

// controlEach is a Control hook that calls set on the socket for each key.
func controlEach[K any](keys []K, set func(fd int, k K) error) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			for _, k := range keys {
				if err = set(int(fd), k); err != nil {
					return
				}
			}
		})
		if cerr != nil {
			return cerr
		}
		return err
	}
}

// xsysSetKey installs k on fd; a key with no secret deletes the peer's key.
func xsysSetKey(fd int, k tcpmd5.Key) error {
	var sig unix.TCPMD5Sig
	sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sig.Addr))
	sa.Family = unix.AF_INET
	sa.Addr = k.Peer.Addr().As4()
	sig.Keylen = uint16(copy(sig.Key[:], k.Secret))
	if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	return nil
}

type xsysListener struct{ *net.TCPListener }

func (l xsysListener) SetKey(k tcpmd5.Key) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = xsysSetKey(int(fd), k) }); err != nil {
		return err
	}
	return serr
}

func (l xsysListener) RemoveKey(k tcpmd5.Key) error {
	k.Secret = nil
	return l.SetKey(k)
}
