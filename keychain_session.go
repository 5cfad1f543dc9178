package tcpmd5

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"
	"weak"
)

// ChainSession is what [KeyChain.Sessions] reports of one live connection.
type ChainSession struct {
	Remote, Local netip.AddrPort
	// Keys and AOKeys are the keys of the chain the connection holds,
	// without their secrets.
	Keys   []Key
	AOKeys []AOKey
	// Current and RNext are a TCP-AO connection's KeyIDs now: the SendID
	// it signs with and the RecvID it asks the peer for (see [AOInfo]).
	Current, RNext uint8
	// Lagging reports that the peer of a TCP-AO connection has not
	// followed the chain's preferred key: it still asks for another; or,
	// since the chain switched the connection to the preferred key, no
	// segment of the peer's has been verified with it (the key's pkt_good
	// is 0: a peer that stays silent lags until it speaks); or a key it
	// asked for was deleted at its end.
	Lagging bool
	// Err is the last failure of applying the chain to the connection.
	Err error
}

// session is a live connection the chain keeps in step, held weakly.
type session struct {
	conn          weak.Pointer[net.TCPConn]
	remote, local netip.AddrPort
	l3index       int
	family        int             // the socket's address family, read once
	host          bool            // accepted: its MD5 key is a host copy of the listener's
	md5           *Key            // the MD5 entry it holds, secret included; nil for none
	ao            keyTable[AOKey] // the AO keys it holds
	current       uint8           // the SendID the chain made current, and whether it did
	currentSet    bool
	switched      bool // the chain made another key current since the first
	lagging       bool // a key the peer asked for was deleted
	err           error
}

// track makes the chain keep c, a connection a Listener accepted (host) or
// a Dialer made, in step from now on, applying the chain to it at once.
func (c *KeyChain) track(conn *net.TCPConn, host bool) {
	remote, local := addrPort(conn.RemoteAddr()), addrPort(conn.LocalAddr())
	s := &session{conn: weak.Make(conn), remote: remote, local: local, host: host}
	if rc, err := conn.SyscallConn(); err == nil {
		s.l3index, _ = boundIfindex(rc)
		s.family, _ = rawFamily(rc)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stateLocked(time.Now())
	// What the handshake installed: the chain's keys for the peer then,
	// which the chain may have changed since; applying makes them its own.
	if ks := st.md5.best(remote.Addr(), s.l3index); len(ks) > 0 {
		k := ks[0].clone()
		s.md5 = &k
	}
	s.err = c.applySession(s, conn, st)
	if errors.Is(s.err, net.ErrClosed) {
		return
	}
	if len(c.sessions) >= 2*max(c.swept, 64) {
		c.sweepLocked()
	}
	c.sessions = append(c.sessions, s)
}

// sweepLocked forgets the connections that were dropped or closed.
func (c *KeyChain) sweepLocked() {
	c.sessions = slices.DeleteFunc(c.sessions, func(s *session) bool {
		conn := s.conn.Value()
		if conn == nil {
			return true
		}
		rc, err := conn.SyscallConn()
		return err != nil || rc.Control(func(uintptr) {}) != nil
	})
	c.swept = len(c.sessions)
}

// applySession makes the live connection conn of s hold st's keys for its
// peer: an MD5 secret replaced in place; AO keys added while on, the
// preferred one made current and asked for, keys deleted once ended. A
// closed connection returns an error that matches net.ErrClosed.
func (c *KeyChain) applySession(s *session, conn *net.TCPConn, st *chainState) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return net.ErrClosed
	}
	if rc.Control(func(uintptr) {}) != nil {
		return net.ErrClosed
	}
	var errs []error
	if s.md5 != nil {
		if ks := st.md5.best(s.remote.Addr(), s.l3index); len(ks) > 0 && ks[0].id() == s.md5.id() {
			errs = append(errs, s.setMD5(rc, ks[0]))
		}
	}
	if keys := st.ao.best(s.remote.Addr(), s.l3index); len(keys) > 0 {
		errs = append(errs, c.applyAO(s, rc, keys, st.at))
	}
	s.err = errors.Join(errs...)
	return s.err
}

// applyMD5 gives the live connection conn of s the secret of k, which
// signs for its MD5 entry now.
func (s *session) applyMD5(conn *net.TCPConn, k Key) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return net.ErrClosed
	}
	s.err = s.setMD5(rc, k)
	return s.err
}

// setMD5 overwrites the secret of the connection's MD5 entry with k's, if
// it differs.
func (s *session) setMD5(rc syscall.RawConn, k Key) error {
	if bytes.Equal(k.Secret, s.md5.Secret) {
		return nil
	}
	entry := k
	if s.host { // the accepted socket's copy is a host key
		entry.Peer = netip.PrefixFrom(s.remote.Addr(), s.remote.Addr().BitLen())
	}
	if err := setKey(rc, s.family, entry); err != nil {
		return err
	}
	k = k.clone()
	s.md5 = &k
	return nil
}

// signsOther reports whether the connection of s may sign with another key
// than the one of SendID id.
func (s *session) signsOther(id uint8) bool { return !s.currentSet || s.current != id }

// madeCurrent records that the chain made the key of SendID id current.
func (s *session) madeCurrent(id uint8) {
	s.current, s.switched, s.currentSet = id, s.currentSet, true
}

// applyAO is applySession for the AO keys of the connection's peer.
func (c *KeyChain) applyAO(s *session, rc syscall.RawConn, keys []AOKey, t time.Time) error {
	var errs []error
	pref, ok := c.preferred(keys, t)
	for _, k := range keys {
		if _, held := s.ao.get(k.id()); c.aoOn(k, t) && !held {
			// A key preferred as it arrives is made current and asked for
			// in the call that adds it.
			add := aoAdd
			signing := ok && k.id() == pref.id() && s.signsOther(pref.SendID)
			if signing {
				add = aoAddSigning
			}
			err := withFamily(rc, s.family, func(fd, family int) error { return add(fd, family, k) })
			switch {
			case err == nil && signing:
				s.madeCurrent(pref.SendID)
				fallthrough
			case err == nil || errors.Is(err, syscall.EEXIST):
				s.ao.set(k.bare())
			default:
				errs = append(errs, err)
			}
		}
	}
	if ok && s.signsOther(pref.SendID) {
		if _, held := s.ao.get(pref.id()); held {
			err := controlErr(rc, func(fd int) error { return aoSetSigning(fd, pref.SendID, pref.RecvID) })
			if err != nil {
				errs = append(errs, err)
			} else {
				s.madeCurrent(pref.SendID)
			}
		}
	}
	for _, k := range keys {
		if c.aoOn(k, t) {
			continue
		}
		if err := c.deleteAO(s, rc, k, pref, ok); err != nil {
			errs = append(errs, err)
		}
	}
	for k := range s.ao.all() { // removed from the chain
		if _, inChain := c.ao[k.id()]; !inChain {
			if err := c.deleteAO(s, rc, k, pref, ok); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// deleteAO deletes k from the connection of s. The kernel refuses (EBUSY)
// to delete the key a connection signs with or asks for, atomically: so a
// plain delete goes first, and one refused means the peer still asks for
// k; then k goes with pref made current and asked for in the same call,
// and s is lagging.
func (c *KeyChain) deleteAO(s *session, rc syscall.RawConn, k, pref AOKey, havePref bool) error {
	err := withFamily(rc, s.family, func(fd, family int) error {
		err := aoDel(fd, family, k)
		if !errors.Is(err, syscall.EBUSY) || !havePref || pref.id() == k.id() {
			return err
		}
		if info, ierr := aoGetInfo(fd); ierr == nil && info.Current == k.SendID {
			s.lagging = true
		}
		return aoDelSwitching(fd, family, k, pref.SendID, pref.RecvID)
	})
	if err == nil {
		s.ao.remove(k.id())
	}
	return err
}

// Sessions returns the live connections the chain keeps in step, with the
// keys each holds and, for TCP-AO, its KeyIDs now and whether its peer
// lags behind; it forgets those closed or dropped.
func (c *KeyChain) Sessions() []ChainSession {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sweepLocked()
	now := time.Now()
	out := make([]ChainSession, 0, len(c.sessions))
	for _, s := range c.sessions {
		conn := s.conn.Value()
		if conn == nil {
			continue
		}
		cs := ChainSession{Remote: s.remote, Local: s.local, Err: s.err, Lagging: s.lagging}
		if s.md5 != nil {
			cs.Keys = []Key{s.md5.bare()}
		}
		for k := range s.ao.all() {
			cs.AOKeys = append(cs.AOKeys, k.bare())
		}
		if s.ao.len() > 0 {
			c.readAO(s, conn, &cs, now)
		}
		out = append(out, cs)
	}
	return out
}

// readAO fills in cs, the report of s, a TCP-AO connection, from what its
// kernel says: its KeyIDs now, and whether its peer lags behind.
func (c *KeyChain) readAO(s *session, conn *net.TCPConn, cs *ChainSession, now time.Time) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	var keys []AOKey
	for k := range s.ao.all() {
		keys = append(keys, c.ao[k.id()].key)
	}
	pref, havePref := c.preferred(keys, now)
	err = withFamily(rc, s.family, func(fd, family int) error {
		info, err := aoGetInfo(fd)
		if err != nil {
			return err
		}
		cs.Current, cs.RNext = info.Current, info.RNext
		if !havePref {
			return nil
		}
		if info.Current != pref.SendID {
			cs.Lagging = true
		}
		if s.switched {
			verified, err := aoKeyVerified(fd, family, pref)
			if err != nil {
				return err
			}
			cs.Lagging = cs.Lagging || verified == 0
		}
		return nil
	})
	if err != nil && cs.Err == nil {
		cs.Err = err
	}
}
