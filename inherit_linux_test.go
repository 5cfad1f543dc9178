package tcpmd5_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// reusePort is a Control hook that sets SO_REUSEPORT, as systemd's
// ReusePort=yes does.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); err != nil {
		return err
	}
	return serr
}

// inheritedFile returns a listening socket on 127.0.0.1 made by a plain
// net.ListenConfig with control, as the *os.File a process inherits: the
// listener it came from is closed, and t's cleanup closes the file.
func inheritedFile(t *testing.T, control func(string, string, syscall.RawConn) error) (*os.File, string) {
	t.Helper()
	ln := plainListener(t, "127.0.0.1:0", control)
	f, err := ln.File()
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return f, addr
}

// refusals records what OnRefuse is told.
type refusals struct {
	mu  sync.Mutex
	got []tcpmd5.Refusal
}

func (r *refusals) add(x tcpmd5.Refusal) { r.mu.Lock(); r.got = append(r.got, x); r.mu.Unlock() }

func (r *refusals) has(peer string, why tcpmd5.RefusalReason) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, x := range r.got {
		if x.Remote.Addr().String() == peer && x.Reason == why {
			return true
		}
	}
	return false
}

// requireReset requires c, a connection the kernel completed, to be reset.
func requireReset(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(mustConnect)))
	_, err := c.Read(make([]byte, 1))
	require.ErrorIs(t, err, syscall.ECONNRESET)
	c.Close()
}

// TestFileListener, in a network namespace of its own: an inherited socket
// becomes a Listener with the whole Accept policy. The connections that
// completed before it took the socket are judged as a key change judges
// them (from the peer a key now covers: refused, key-added; from a peer
// none covers: refused, no-key); afterwards the right key is served, a
// wrong one dropped (TCPMD5Failure), an unsigned covered peer dropped
// (TCPMD5NotFound); closing the Listener leaves the inherited file open.
func TestFileListener(t *testing.T) {
	requireMD5(t)
	testenv.Netns(t)
	f, addr := inheritedFile(t, reusePort)
	before := make(map[string]net.Conn)
	for _, src := range []string{"127.0.0.2", "127.0.0.9"} {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: mustConnect}
		c, err := d.Dial("tcp4", addr)
		require.NoError(t, err, "the kernel completes an unsigned handshake with a keyless socket")
		before[src] = c
	}
	var seen refusals
	lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.0.2", secretA)}, OnRefuse: seen.add}
	ln, err := lc.FileListener(f)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	assert.Equal(t, addr, ln.Addr().String())
	assert.Len(t, ln.Keys(), 1)
	serveEcho(t, ln)

	requireEcho(t, dialer("127.0.0.2", key(t, "127.0.0.1", secretA)), addr)
	requireReset(t, before["127.0.0.2"])
	requireReset(t, before["127.0.0.9"])
	require.Eventually(t, func() bool {
		return seen.has("127.0.0.2", tcpmd5.RefusedKeyAdded) && seen.has("127.0.0.9", tcpmd5.RefusedNoKey)
	}, mustConnect, 10*time.Millisecond, "the refusals of the connections that waited")
	dropDial(t, dialer("127.0.0.2", key(t, "127.0.0.1", secretB)), "tcp4", addr, netstat.MD5Failure)
	dropDial(t, dialer("127.0.0.2"), "tcp4", addr, netstat.MD5NotFound)
	requireResetByPolicy(t, ln, dialer("127.0.0.9"), addr)

	require.NoError(t, ln.Close())
	again, err := net.FileListener(f)
	require.NoError(t, err, "closing the Listener closed the inherited file")
	again.Close()
}

// TestFileListenerGrows: an inherited socket bound with SO_REUSEPORT takes
// more host keys than one socket should hold, the group growing to new
// sockets on its address, and every peer is served, the first, a middle
// and the last key's alike.
func TestFileListenerGrows(t *testing.T) {
	requireMD5(t)
	testenv.Netns(t)
	const peers = 300
	f, addr := inheritedFile(t, reusePort)
	var lc tcpmd5.ListenConfig
	for i := range peers {
		lc.Keys = append(lc.Keys, tcpmd5.Key{Peer: hostPrefix(i), Secret: []byte(secretA)})
	}
	ln, err := lc.FileListener(f)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	serveEcho(t, ln)
	assert.Greater(t, listeningSockets(t, port(ln)), 1, "%d keys on one socket", peers)
	for _, i := range []int{0, peers / 2, peers - 1} {
		requireEcho(t, dialer(hostPrefix(i).Addr().String(), key(t, "127.0.0.1", secretA)), addr)
	}
}

// TestFileListenerFixedGroup: an inherited socket bound without
// SO_REUSEPORT holds every key itself, up to what its option memory
// holds; one key more fails FileListener with the remedy, and the socket
// is left with none of the keys: the kernel completes an unsigned
// handshake from a peer they covered.
func TestFileListenerFixedGroup(t *testing.T) {
	requireMD5(t)
	testenv.Netns(t)
	// What one socket holds, here, found by filling one.
	probe := plainListener(t, "127.0.0.1:0", nil)
	room := 0
	for ; room < 100000; room++ {
		if err := tcpmd5.SetKeys(probe, tcpmd5.Key{Peer: hostPrefix(room), Secret: []byte(secretA)}); err != nil {
			break
		}
	}
	require.NoError(t, probe.Close())

	f, addr := inheritedFile(t, nil)
	var lc tcpmd5.ListenConfig
	fits := room * 2 / 3 // more than a listener would put on one socket, fewer than it holds
	for i := range fits {
		lc.Keys = append(lc.Keys, tcpmd5.Key{Peer: hostPrefix(i), Secret: []byte(secretA)})
	}
	ln, err := lc.FileListener(f)
	require.NoError(t, err, "%d keys fit on one socket that holds %d", fits, room)
	serveEcho(t, ln)
	assert.Equal(t, 1, listeningSockets(t, port(ln)))
	requireEcho(t, dialer(hostPrefix(fits-1).Addr().String(), key(t, "127.0.0.1", secretA)), addr)
	require.NoError(t, ln.Close())

	for i := fits; i <= room; i++ {
		lc.Keys = append(lc.Keys, tcpmd5.Key{Peer: hostPrefix(i), Secret: []byte(secretA)})
	}
	_, err = lc.FileListener(f)
	require.Error(t, err, "%d keys on one socket that holds %d", room+1, room)
	assert.Contains(t, err.Error(), "ReusePort=yes")
	var oe *net.OpError
	assert.True(t, errors.As(err, &oe), "%T", err)
	t.Logf("%d keys: %v", room+1, err)

	// No key is left: the kernel completes an unsigned handshake from the
	// first key's peer, and the last one's.
	for _, i := range []int{0, room - 1} {
		src := hostPrefix(i).Addr()
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: mustConnect}
		c, err := d.Dial("tcp4", addr)
		require.NoError(t, err, "a key for %s is left on the socket", src)
		c.Close()
	}
}

// TestFileListenerRefuses: a socket that does not listen, or is not TCP,
// is refused with what to pass instead, and nothing of it is kept open.
func TestFileListenerRefuses(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.0.2", secretA)}}
	_, err := lc.FileListener(nil)
	assert.ErrorContains(t, err, "nil")

	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	unbound := os.NewFile(uintptr(fd), "unbound")
	defer unbound.Close()
	_, err = lc.FileListener(unbound)
	assert.ErrorContains(t, err, "does not listen")

	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer udp.Close()
	uf, err := udp.(*net.UDPConn).File()
	require.NoError(t, err)
	defer uf.Close()
	_, err = lc.FileListener(uf)
	assert.Error(t, err)

	mptcp, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
	if err != nil {
		t.Logf("no MPTCP here (%v): its case is not tried", err)
		return
	}
	mf := os.NewFile(uintptr(mptcp), "mptcp")
	defer mf.Close()
	require.NoError(t, unix.Bind(mptcp, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(mptcp, 1))
	_, err = lc.FileListener(mf)
	assert.ErrorContains(t, err, "not plain TCP")
}
