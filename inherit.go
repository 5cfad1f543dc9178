package tcpmd5

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// inherited is what adopting a listening socket made elsewhere needs to
// know of it, as sockInherited reads it.
type inherited struct {
	v6only    bool // an AF_INET6 socket that takes no IPv4 peers
	reusePort bool // bound with SO_REUSEPORT: more sockets can join its group
}

// errFixedGroup is the error of growing the group of an inherited socket
// that was bound without SO_REUSEPORT.
var errFixedGroup = errors.New("tcpmd5: the inherited socket lacks SO_REUSEPORT (systemd: ReusePort=yes): no socket can join it")

// FileListener makes the listening TCP socket f, inherited from systemd
// (LISTEN_FDS) or passed by another process, a Listener with lc's keys
// and the whole Accept policy of one that Listen made: it installs the
// keys before it returns, takes the connections already waiting in the
// socket's queue, and judges them as it judges those that wait when a key
// is added (see [Listener.SetKey]): one whose handshake completed before
// the key that covers its peer is refused, [RefusedKeyAdded]. If any key
// cannot be installed, FileListener deletes those it installed and fails:
// nothing is left half-applied.
//
// The Listener holds its own descriptor of the socket, as
// [net.FileListener]: closing f is the caller's business, and closing the
// Listener leaves f open. If FileListener fails, the socket holds none of lc's keys, and
// a key set on it before for one of their peers is gone too (the kernel
// cannot give a secret back): do not serve on it. When the keys are more than one socket holds, the group grows
// as Listen's does, new sockets binding the inherited one's address with
// lc's Control; that needs the inherited socket bound with SO_REUSEPORT
// (in a systemd socket unit, ReusePort=yes), and without it every key
// goes on the one socket, which holds up to about 960 (see [Listener]).
//
// The kernel drops a signed SYN that reaches a socket with no key for
// its peer, so it never completes: a service started by systemd on its
// socket's first connection (lazy activation) is never started by a
// signed peer. Start the service with its socket (systemctl enable
// NAME.service, or Requires= and After= on the socket), so that its keys
// are on the socket before the first SYN arrives.
func (lc *ListenConfig) FileListener(f *os.File) (*Listener, error) {
	if f == nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Err: errors.New("tcpmd5: FileListener: the file is nil")}
	}
	nl, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	tl, ok := nl.(*net.TCPListener)
	if !ok {
		nl.Close()
		return nil, &net.OpError{Op: "listen", Net: nl.Addr().Network(), Addr: nl.Addr(), Err: fmt.Errorf("tcpmd5: %s is not a TCP socket", f.Name())}
	}
	s, in, err := adopt(tl)
	if err != nil {
		tl.Close()
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: tl.Addr(), Err: err}
	}
	network := "tcp4"
	if s.family != syscall.AF_INET {
		network = "tcp"
		if in.v6only {
			network = "tcp6"
		}
	}
	l, keys, aoKeys, err := lc.newListener(network)
	if err == nil && lc.TTLSecurity != 0 {
		err = applyTTLSecurity(s.rc, lc.TTLSecurity)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	l.shards, l.address, l.fixed = []*shard{s}, s.ln.Addr().String(), !in.reusePort
	if err := l.startFanIn(); err != nil {
		s.close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: s.ln.Addr(), Err: err}
	}
	// Each key goes on as SetKey puts it on a live listener, whose drains
	// judge the connections that completed before it.
	for _, k := range keys {
		if err = l.SetKey(k); err != nil {
			break
		}
	}
	for i := 0; err == nil && i < len(aoKeys); i++ {
		err = l.SetAOKey(aoKeys[i])
	}
	if err == nil && lc.KeyChain != nil {
		if err = lc.KeyChain.overlaps(keys, aoKeys); err == nil {
			err = l.attachChain(lc.KeyChain, &keySet{})
		}
	}
	if err != nil {
		for _, k := range l.Keys() {
			_ = removeLive(l, k)
		}
		for _, k := range l.AOKeys() {
			_ = removeLive(l, k)
		}
		l.Close()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: s.ln.Addr(), Err: err}
	}
	return l, nil
}

// adopt makes tl, a socket made elsewhere, the first socket of a group, if
// it is a plain TCP socket that listens.
func adopt(tl *net.TCPListener) (*shard, inherited, error) {
	rc, err := tl.SyscallConn()
	if err != nil {
		return nil, inherited{}, err
	}
	in, err := control(rc, sockInherited)
	if err != nil {
		return nil, inherited{}, err
	}
	family, err := rawFamily(rc)
	if err != nil {
		return nil, inherited{}, err
	}
	return &shard{ln: tl, rc: rc, family: family}, in, nil
}
