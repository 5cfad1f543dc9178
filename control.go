package tcpmd5

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
)

// The operations on a socket, written once over the fd-level verbs that
// control_linux.go and ao_linux.go implement and control_other.go stubs:
// md5Fits, md5Add and md5Del for MD5 keys; aoAdd, aoAddSigning, aoDel,
// aoDelSwitching, aoGetInfo, aoKeyVerified, aoSetCurrent, aoSetRNext and
// aoSetSigning for TCP-AO; sockFamily, sockFDTable, sockIfindex,
// sockInherited, sockQueued, sockReusePort, sockSteer and sockTTLSecurity
// for the rest. Each verb is one kernel operation on one descriptor and
// gives the kernel's error its meaning.

// control runs f on the socket behind c, the one way this package touches
// a raw socket (with controlErr, its form for an f without a value): f's
// error comes back as it is (f gives it its meaning), and the RawConn's
// own, such as a closed socket's, wrapped once.
func control[T any](c syscall.RawConn, f func(fd int) (T, error)) (T, error) {
	var v T
	var err error
	if cerr := c.Control(func(fd uintptr) { v, err = f(int(fd)) }); cerr != nil {
		return v, fmt.Errorf("tcpmd5: %w", cerr)
	}
	return v, err
}

// controlErr is control for an f that returns only an error, written out
// so that a dial's key costs no closure more than it must.
func controlErr(c syscall.RawConn, f func(fd int) error) error {
	var err error
	if cerr := c.Control(func(fd uintptr) { err = f(int(fd)) }); cerr != nil {
		return fmt.Errorf("tcpmd5: %w", cerr)
	}
	return err
}

// withFamily runs op on the socket behind c, of family, or of the family
// read from the kernel if family is 0.
func withFamily(c syscall.RawConn, family int, op func(fd, family int) error) error {
	return controlErr(c, func(fd int) error {
		family, err := familyOr(fd, family)
		if err != nil {
			return err
		}
		return op(fd, family)
	})
}

// familyOr returns family, or if it is 0 the family of socket fd.
func familyOr(fd, family int) (int, error) {
	if family != 0 {
		return family, nil
	}
	return sockFamily(fd)
}

// applyKeys installs keys on the socket behind c, of family (0: read it
// from the kernel), all of them or none: if one fails, those installed
// before it are deleted. Only a socket nobody else holds a key on, a fresh
// one, may be rolled back so.
func applyKeys(c syscall.RawConn, family int, keys []Key) error {
	if len(keys) == 0 {
		return nil
	}
	return controlErr(c, func(fd int) error {
		family, err := familyOr(fd, family)
		if err != nil {
			return err
		}
		n, err := fdInstall(fd, family, keys)
		if err != nil {
			for _, done := range keys[:n] {
				_, _ = md5Del(fd, family, done)
			}
		}
		return err
	})
}

// installEach installs keys on the socket behind c, a socket made
// elsewhere, in order, and stops at the first the kernel refuses. It
// deletes none: an installed key may have replaced one whose secret the
// kernel cannot give back, and deleting it would leave that peer without
// a key. It returns how many it installed.
func installEach(c syscall.RawConn, keys []Key) (int, error) {
	return control(c, func(fd int) (int, error) {
		family, err := sockFamily(fd)
		if err != nil {
			return 0, err
		}
		return fdInstall(fd, family, keys)
	})
}

// fdInstall checks every key for fd, a socket of family, then installs
// them in order and stops at the first the kernel refuses. It returns how
// many it installed.
func fdInstall(fd, family int, keys []Key) (int, error) {
	for _, k := range keys {
		if err := md5Fits(family, k); err != nil {
			return 0, err
		}
	}
	for i, k := range keys {
		if err := md5Add(fd, family, k); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

// setKey installs k on the socket behind c, whose address family the
// caller already knows: one setsockopt(2), as a live listener's SetKey costs.
func setKey(c syscall.RawConn, family int, k Key) error {
	return withFamily(c, family, func(fd, family int) error { return md5Add(fd, family, k) })
}

// removeKey deletes the key for k.Peer and k.Ifindex from the socket behind
// c, whose address family the caller knows. A key that is not there is not
// an error.
func removeKey(c syscall.RawConn, family int, k Key) error {
	return controlErr(c, func(fd int) error {
		_, err := md5Del(fd, family, k)
		return err
	})
}

// md5Held reports whether connection c holds an MD5 key for peer on
// interface ifindex, the copy the kernel makes when it verified the
// handshake with a listener's key: deleting it succeeds, where a socket
// without one answers ENOENT. A deleted key is put back at once with
// secret, which must be the one the kernel copied; if that fails, c is
// left without a key and the error says so, and the caller must close c.
func md5Held(c syscall.RawConn, peer netip.Addr, ifindex int, secret []byte) (bool, error) {
	return control(c, func(fd int) (bool, error) {
		family, err := sockFamily(fd)
		if err != nil {
			return false, err
		}
		k := Key{Peer: netip.PrefixFrom(peer, peer.BitLen()), Ifindex: ifindex, Secret: secret}
		if held, err := md5Del(fd, family, k); err != nil || !held {
			return false, err
		}
		return true, md5Add(fd, family, k)
	})
}

// applyAOKeys installs AO keys on the socket behind c, of family (0: read
// it from the kernel), all of them or none.
func applyAOKeys(c syscall.RawConn, family int, keys []AOKey) error {
	return addAOKeys(c, family, keys, aoAdd)
}

// signAOKeys is applyAOKeys for a socket about to dial: the first key
// becomes the one it signs with and asks the peer for.
func signAOKeys(c syscall.RawConn, family int, keys []AOKey) error {
	return addAOKeys(c, family, keys, aoAddSigning)
}

// addAOKeys installs keys, the first with add, all or none.
func addAOKeys(c syscall.RawConn, family int, keys []AOKey, add func(fd, family int, k AOKey) error) error {
	if len(keys) == 0 {
		return nil
	}
	return withFamily(c, family, func(fd, family int) error {
		for i, k := range keys {
			if i > 0 {
				add = aoAdd
			}
			if err := add(fd, family, k); err != nil {
				for _, done := range keys[:i] {
					_ = aoDel(fd, family, done)
				}
				return err
			}
		}
		return nil
	})
}

// addAOKey installs k on the socket behind c, of family (0: read it).
func addAOKey(c syscall.RawConn, family int, k AOKey) error {
	return withFamily(c, family, func(fd, family int) error { return aoAdd(fd, family, k) })
}

// removeAOKey deletes k from the socket behind c, of family (0: read it);
// one that is not there is not an error.
func removeAOKey(c syscall.RawConn, family int, k AOKey) error {
	return withFamily(c, family, func(fd, family int) error { return aoDel(fd, family, k) })
}

// acceptedAO reports whether the connection behind c completed its
// handshake with TCP-AO: only then does the kernel give it AO state, which
// TCP_AO_INFO reads (ENOENT otherwise).
func acceptedAO(c syscall.RawConn) (bool, error) {
	return control(c, func(fd int) (bool, error) {
		_, err := aoGetInfo(fd)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.ENOENT):
			return false, nil
		}
		return false, err
	})
}

// rawFamily reads the address family of the socket behind c.
func rawFamily(c syscall.RawConn) (int, error) { return control(c, sockFamily) }

// boundIfindex returns the interface the socket behind c is bound to, or 0.
func boundIfindex(c syscall.RawConn) (int, error) { return control(c, sockIfindex) }

// queued reports whether the listening socket behind c has a connection in
// its accept queue; false if that cannot be read.
func queued(c syscall.RawConn) bool {
	q, _ := control(c, func(fd int) (bool, error) { return sockQueued(fd), nil })
	return q
}

// joinGroup lets the listener add sockets bound to the socket's address
// later: SO_REUSEPORT, before bind(2).
func joinGroup(c syscall.RawConn) error { return controlErr(c, sockReusePort) }

// steer makes the reuseport group of the socket behind c send each SYN to
// the socket shardOf picks among n.
func steer(c syscall.RawConn, n int) error {
	return controlErr(c, func(fd int) error { return sockSteer(fd, n) })
}

// applyTTLSecurity makes the socket behind c send with TTL 255 and drop
// segments that crossed more than hops routers (RFC 5082); 0 does nothing.
func applyTTLSecurity(c syscall.RawConn, hops int) error {
	if hops == 0 {
		return nil
	}
	return controlErr(c, func(fd int) error { return sockTTLSecurity(fd, hops) })
}

// keysFull reports whether err says that a socket's option memory
// (net.core.optmem_max) holds no more keys.
func keysFull(err error) bool { return errors.Is(err, syscall.ENOMEM) }

// hostsPerSocket caps the host keys a Listener puts on one socket, well
// below the roughly 960 keys its option memory holds: the kernel keeps a
// socket's keys in a list and walks all of it, cold, for the SYN of every
// handshake it verifies, so the fewer keys a socket, the cheaper the
// handshake, at the price of more sockets. Prefix keys, which go on every
// socket, come on top (hostRoom).
const hostsPerSocket = 64

// keyBytes is what the kernel charges to a socket's option memory for one
// key, sizeof(struct tcp_md5sig_key) on 64-bit 6.x kernels: 131072 bytes of
// net.core.optmem_max hold 963 keys.
const keyBytes = 136

// socketCapacity is how many MD5 keys one socket's option memory
// (net.core.optmem_max, read once) holds: about 960 on 6.x kernels, 150
// on older ones.
var socketCapacity = sync.OnceValue(func() int {
	n := 150 // what the smallest default, optmem_max 20480 on old kernels, holds
	if optmem, err := optmemMax(); err == nil && optmem >= keyBytes {
		n = optmem / keyBytes
	}
	return n
})

// optmemFull says what a socket's full option memory (ENOMEM) holds.
func optmemFull() string {
	if n, err := optmemMax(); err == nil {
		return fmt.Sprintf("net.core.optmem_max is %d bytes, about %d MD5 keys", n, n/keyBytes)
	}
	return "net.core.optmem_max"
}
