package bench

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/rawao"
)

// The TCP-AO variants take the same keys as the MD5 ones and make TCP-AO
// keys of them: the peer and the secret, hmac(sha1) with a 12-byte MAC
// (RFC 5926's default), the listener signing with KeyID 1 and verifying
// KeyID 2, the dialer the other way round.
const aoAlgorithm = "hmac(sha1)"

// aoKey is k as a listener's (listener) or dialer's AO key.
func aoKey(k tcpmd5.Key, listener bool) tcpmd5.AOKey {
	ao := tcpmd5.AOKey{Peer: k.Peer, SendID: 2, RecvID: 1, Algorithm: aoAlgorithm, Secret: k.Secret}
	if listener {
		ao.SendID, ao.RecvID = 1, 2
	}
	return ao
}

func aoKeys(keys []tcpmd5.Key) []tcpmd5.AOKey {
	out := make([]tcpmd5.AOKey, len(keys))
	for i, k := range keys {
		out[i] = aoKey(k, true)
	}
	return out
}

func tcpAOVariant() Variant {
	d := &tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{aoKey(serverKey, false)}}
	d.LocalAddr = clientAddr
	return Variant{
		Name: TCPAO,
		Listen: func(keys []tcpmd5.Key) (Listener, error) {
			lc := tcpmd5.ListenConfig{AOKeys: aoKeys(keys)}
			ln, err := lc.Listen(context.Background(), "tcp4", serverAddr)
			if err != nil {
				return nil, err
			}
			return aoListener{ln}, nil
		},
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
	}
}

type aoListener struct{ *tcpmd5.Listener }

func (l aoListener) SetKey(k tcpmd5.Key) error    { return l.SetAOKey(aoKey(k, true)) }
func (l aoListener) RemoveKey(k tcpmd5.Key) error { return l.RemoveAOKey(aoKey(k, true)) }

// The TCP-AO baseline: plain TCP sockets and a Control hook that calls
// setsockopt(2) TCP_AO_ADD_KEY with struct tcp_ao_add laid out by hand
// (package rawao), the way a program without this module would.

func xsysAOVariant() Variant {
	d := &net.Dialer{LocalAddr: clientAddr, Control: xsysAOControl([]tcpmd5.AOKey{aoKey(serverKey, false)})}
	d.SetMultipathTCP(false)
	return Variant{
		Name: XSysAO,
		Listen: func(keys []tcpmd5.Key) (Listener, error) {
			lc := net.ListenConfig{Control: xsysAOControl(aoKeys(keys))}
			lc.SetMultipathTCP(false)
			ln, err := lc.Listen(context.Background(), "tcp4", serverAddr)
			if err != nil {
				return nil, err
			}
			return xsysAOListener{ln.(*net.TCPListener)}, nil
		},
		Dial: func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp4", addr)
		},
	}
}

func xsysAOControl(keys []tcpmd5.AOKey) func(network, address string, c syscall.RawConn) error {
	return controlEach(keys, func(fd int, k tcpmd5.AOKey) error { return xsysAO(fd, k, false) })
}

// xsysAO adds k, an IPv4 host key, to fd, or deletes it with del.
func xsysAO(fd int, k tcpmd5.AOKey, del bool) error {
	rk := rawao.Key{Peer: k.Peer, SendID: k.SendID, RecvID: k.RecvID, Algorithm: k.Algorithm, MACLen: 12, Secret: k.Secret}
	if del {
		return rawao.Del(fd, unix.AF_INET, rk)
	}
	return rawao.Add(fd, unix.AF_INET, rk)
}

type xsysAOListener struct{ *net.TCPListener }

func (l xsysAOListener) change(k tcpmd5.Key, del bool) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = xsysAO(int(fd), aoKey(k, true), del) }); err != nil {
		return err
	}
	return serr
}

func (l xsysAOListener) SetKey(k tcpmd5.Key) error    { return l.change(k, false) }
func (l xsysAOListener) RemoveKey(k tcpmd5.Key) error { return l.change(k, true) }
