package tcpmd5

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// The secrets of these tests, obviously fake.
var (
	fakeA = []byte("fake-secret-alpha")
	fakeB = []byte("fake-secret-bravo")
)

// dialFrom connects from src to addr, signing with secret unless it is nil.
func dialFrom(t *testing.T, src, addr string, secret []byte) net.Conn {
	t.Helper()
	return dialWith(t, keyedDialer(netip.MustParseAddr(src), secret), addr)
}

// dialWith connects with d to addr, on 127.0.0.1; the connection is closed
// when t ends.
func dialWith(t *testing.T, d Dialer, addr string) net.Conn {
	t.Helper()
	c, err := d.Dial("tcp4", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// dialKeyed dials addr, on 127.0.0.1, from src, signed with secret, or
// unsigned if secret is nil.
func dialKeyed(src netip.Addr, addr string, secret []byte) (net.Conn, error) {
	d := keyedDialer(src, secret)
	return d.Dial("tcp4", addr)
}

// keyedDialer dials from src, signing with secret for 127.0.0.1, or
// unsigned if secret is nil.
func keyedDialer(src netip.Addr, secret []byte) Dialer {
	d := Dialer{AllowUnsigned: secret == nil}
	d.Timeout = 30 * time.Second
	d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	if secret != nil {
		d.Keys = []Key{{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: secret}}
	}
	return d
}

// echoes requires client's bytes back from server, which echoes them.
func echoes(t *testing.T, client, server net.Conn) {
	t.Helper()
	go func() { _, _ = io.CopyN(server, server, 4) }()
	require.NoError(t, client.SetDeadline(time.Now().Add(10*time.Second)))
	_, err := client.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(client, buf)
	require.NoError(t, err)
	assert.Equal(t, "ping", string(buf))
}

// TestMD5Held: md5Held tells a connection the kernel verified with a key,
// which holds a copy of it, from an unsigned one, and leaves the verified
// one signing and verifying with the same secret.
func TestMD5Held(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	t.Parallel()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	lc.Control = Control(Key{Peer: netip.MustParsePrefix("127.0.27.1/32"), Secret: fakeA})
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	for _, tt := range []struct {
		src    string
		secret []byte
		held   bool
	}{
		{"127.0.27.1", fakeA, true},
		{"127.0.27.2", nil, false},
	} {
		client := dialFrom(t, tt.src, ln.Addr().String(), tt.secret)
		server, err := ln.Accept()
		require.NoError(t, err)
		defer server.Close()
		rc, err := server.(*net.TCPConn).SyscallConn()
		require.NoError(t, err)
		held, err := md5Held(rc, netip.MustParseAddr(tt.src), 0, fakeA)
		require.NoError(t, err)
		assert.Equal(t, tt.held, held, tt.src)
		echoes(t, client, server)
	}
}

// TestSetKeyJudgesWhatCompletedDuringIt: a signed handshake that completes
// between the moment SetKey's key reaches the socket and the moment SetKey
// takes the queue is handed over, an unsigned one that completed before is
// refused. The test takes SetKey's steps itself, so that the signed
// handshake completes between them.
func TestSetKeyJudgesWhatCompletedDuringIt(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	var refused refusals
	l, err := (&ListenConfig{OnRefuse: refused.add}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	k := Key{Peer: netip.MustParsePrefix("127.0.27.0/24"), Secret: fakeB}
	l.mu.Lock() // no accept now: both connections wait in the queue
	unsigned := dialFrom(t, "127.0.27.10", l.Addr().String(), nil)
	require.NoError(t, setKey(l.first.rc, l.first.family, k)) // what SetKey does, then
	signed := dialFrom(t, "127.0.27.11", l.Addr().String(), fakeB)
	l.first.keys.md5.set(k.bare())
	l.keys.md5.set(k.clone())
	require.NoError(t, l.drain(l.first, []Key{k}))
	l.mu.Unlock()

	requireHandedOver(t, l, signed)
	requireRefused(t, l, &refused, unsigned, RefusedKeyAdded)
}

// TestPrefixKeyLetsAcceptIn: a prefix key goes on the group's sockets one
// at a time, each with its queue judged, and between two the listener lets
// Accept in, so that Accept waits for one socket's step, not the group's.
// A signed connection that arrives once the key is on the first socket is
// handed over before SetKey returns; an unsigned one from a peer of the
// new key, on a socket the key has not reached, is refused as one that a
// key now covers. RemoveKey takes the key off the same way.
func TestPrefixKeyLetsAcceptIn(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	var keys []Key
	for i := range 3 * hostsPerSocket {
		keys = append(keys, Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 0, 40 + byte(i/250), byte(i%250 + 1)}), 32), Secret: fakeA})
	}
	var refused refusals
	lc := ListenConfig{Keys: keys, OnRefuse: refused.add}
	l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	n := len(l.shards)
	require.Greater(t, n, 2)
	// The signed connection, then the unsigned one refused inside Accept,
	// which waits on until Close.
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
			_, _ = l.Accept()
		}
	}()

	k := Key{Peer: netip.MustParsePrefix("127.0.50.0/24"), Secret: fakeB}
	var late netip.Addr // a peer of k whose SYNs reach the last socket, which k reaches last
	for i := 1; !late.IsValid(); i++ {
		if a := netip.AddrFrom4([4]byte{127, 0, 50, byte(i)}); shardOf(peerHash(a), n) == n-1 {
			late = a
		}
	}
	yields := 0
	// The hook runs with l.mu released inside SetKey: it fails the test
	// with assert, never require, whose Goexit would unlock l.mu again.
	l.yielded = func() {
		if yields++; yields > 1 {
			return
		}
		signed, err := dialKeyed(keys[0].Peer.Addr(), l.Addr().String(), fakeA)
		if !assert.NoError(t, err) {
			return
		}
		defer signed.Close()
		select {
		case c := <-accepted:
			assert.Equal(t, signed.LocalAddr().String(), c.RemoteAddr().String())
			c.Close()
		case <-time.After(30 * time.Second):
			t.Error("Accept handed nothing over while the key went on the group")
		}
		// Accept may refuse it before the dial has read its own outcome.
		unsigned, err := dialKeyed(late, l.Addr().String(), nil)
		if err == nil {
			defer unsigned.Close()
			_ = unsigned.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, err = unsigned.Read(make([]byte, 1))
		}
		assert.ErrorIs(t, err, syscall.ECONNRESET, "an unsigned peer of the new key, before the key reached its socket")
	}
	require.NoError(t, l.SetKey(k))
	assert.Equal(t, n-1, yields, "one yield between two sockets")
	refused.told(t, []Refusal{{Remote: netip.AddrPortFrom(late, 0), Local: l.first.addrPort(), Reason: RefusedKeyAdded}})
	for _, s := range l.shards {
		_, ok := s.keys.md5.get(k.id())
		assert.True(t, ok, "every socket holds the key")
	}

	yields = 0
	l.yielded = func() { yields++ }
	require.NoError(t, l.RemoveKey(k))
	assert.Equal(t, n-1, yields, "RemoveKey too")
	for _, s := range l.shards {
		_, ok := s.keys.md5.get(k.id())
		assert.False(t, ok, "no socket holds the key")
	}
}

// inDescriptorChild is InChild for a test, needing feature, that runs the
// process out of descriptors: it reports whether this is the child, which
// then has a network namespace of its own and a descriptor limit of 512.
func inDescriptorChild(t *testing.T, feature testenv.Feature, env, want string) bool {
	t.Helper()
	testenv.Require(t, feature)
	testenv.RequireRoot(t)
	if !InChild(t, env, want) {
		return false
	}
	testenv.Netns(t)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 512, Max: 512}))
	return true
}

// TestRemoveKeyFailureChangesNothing: a prefix key's RemoveKey that fails
// on a socket of the group, out of descriptors while it takes the
// connection that waits there, verified with the key, puts the key back on
// the sockets it had left: each holds it again, in the kernel too, and the
// waiting connection is handed over. It used to leave those sockets
// without the key, dropping its peers' signed SYNs. It runs in a child of
// the test binary, whose descriptor limit it lowers.
func TestRemoveKeyFailureChangesNothing(t *testing.T) {
	if !inDescriptorChild(t, testenv.MD5, "TCPMD5_REMOVE_CHILD", "the key is back on every socket") {
		return
	}
	k := Key{Peer: netip.MustParsePrefix("127.0.80.0/24"), Secret: fakeB}
	l, err := (&ListenConfig{Keys: append(hostKeys(3*hostsPerSocket), k)}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	n := len(l.shards)
	require.Greater(t, n, 2)
	peerOn := func(shard int) netip.Addr { // a peer of k whose SYNs reach that socket
		for i := 1; i < 255; i++ {
			if a := netip.AddrFrom4([4]byte{127, 0, 80, byte(i)}); shardOf(peerHash(a), n) == shard {
				return a
			}
		}
		t.Fatalf("no peer of %s reaches socket %d", k.Peer, shard)
		return netip.Addr{}
	}
	first, last := peerOn(0), peerOn(n-1)

	// Once the key is off the first socket, a signed connection waits on
	// the last one and the process runs out of descriptors. The hook runs
	// with l.mu released inside RemoveKey: it fails the test with assert,
	// never require, whose Goexit would unlock l.mu again.
	var waiting net.Conn
	var fill []*os.File
	l.yielded = func() {
		if waiting != nil {
			return
		}
		var err error
		if waiting, err = dialKeyed(last, l.Addr().String(), fakeB); !assert.NoError(t, err) {
			return
		}
		assert.Eventually(t, func() bool { return queued(l.shards[n-1].rc) }, 10*time.Second, time.Millisecond)
		fill, err = testenv.FillDescriptors()
		assert.NoError(t, err)
	}
	err = l.RemoveKey(k)
	for _, f := range fill {
		f.Close()
	}
	require.NotNil(t, waiting, "RemoveKey never yielded")
	defer waiting.Close()
	require.ErrorIs(t, err, unix.EMFILE)
	t.Log(err)
	for i, s := range l.shards {
		_, ok := s.keys.md5.get(k.id())
		assert.True(t, ok, "socket %d holds the key", i)
	}
	_, ok := l.keys.md5.get(k.id())
	assert.True(t, ok, "the listener holds the key")

	require.NoError(t, l.SetDeadline(time.Now().Add(30*time.Second)))
	c, err := l.Accept()
	require.NoError(t, err)
	assert.Equal(t, waiting.LocalAddr().String(), c.RemoteAddr().String())
	c.Close()
	signed, err := dialKeyed(first, l.Addr().String(), fakeB)
	require.NoError(t, err, "a signed peer of the key, whose SYNs reach the first socket")
	defer signed.Close()
	c, err = l.Accept()
	require.NoError(t, err)
	assert.Equal(t, signed.LocalAddr().String(), c.RemoteAddr().String())
	c.Close()
	assert.Zero(t, l.RefusedUnsigned())
	t.Log("the key is back on every socket")
}

// refusals records what a Listener's OnRefuse is told.
type refusals struct {
	mu sync.Mutex
	rs []Refusal
}

func (r *refusals) add(x Refusal) { r.mu.Lock(); r.rs = append(r.rs, x); r.mu.Unlock() }

// portless returns the refusals so far with the remote ports zeroed.
func (r *refusals) portless() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return portless(r.rs)
}

// told asserts that OnRefuse was told want, with the remote ports zeroed,
// and nothing else. It is told after the reset goes out, which the dial may
// see first, so it waits for the first refusal.
func (r *refusals) told(t *testing.T, want []Refusal) {
	t.Helper()
	assert.Eventually(t, func() bool { return len(r.portless()) > 0 }, 10*time.Second, time.Millisecond)
	assert.Equal(t, want, r.portless())
}

// requireRefused requires that Accept on l hands nothing over within a
// second, and that l refused exactly one connection, client's, for why:
// counted, told to OnRefuse (recorded in rs), reset.
func requireRefused(t *testing.T, l *Listener, rs *refusals, client net.Conn, why RefusalReason) {
	t.Helper()
	require.NoError(t, l.SetDeadline(time.Now().Add(time.Second)))
	_, err := l.Accept()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "the connection is not handed over")
	assert.EqualValues(t, 1, l.RefusedUnsigned())
	remote := netip.MustParseAddrPort(client.LocalAddr().String())
	rs.told(t, []Refusal{{Remote: netip.AddrPortFrom(remote.Addr(), 0), Local: l.first.addrPort(), Reason: why}})
	require.NoError(t, client.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = client.Read(make([]byte, 1))
	require.ErrorIs(t, err, syscall.ECONNRESET)
}

// requireHandedOver requires that Accept on l hands over client's
// connection.
func requireHandedOver(t *testing.T, l *Listener, client net.Conn) {
	t.Helper()
	require.NoError(t, l.SetDeadline(time.Now().Add(10*time.Second)))
	c, err := l.Accept()
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, client.LocalAddr().String(), c.RemoteAddr().String())
	echoes(t, client, c)
}

// portless returns rs with the remote ports zeroed, which the kernel chose.
func portless(rs []Refusal) []Refusal {
	out := make([]Refusal, len(rs))
	for i, r := range rs {
		r.Remote = netip.AddrPortFrom(r.Remote.Addr(), 0)
		out[i] = r
	}
	return out
}

// TestRemovedKeyLeavesNoSecret: once RemoveKey took a key off the
// listener, nothing of the listener keeps its secret: not the registry,
// and not the hooks that installed it on a socket, which the socket's
// ListenConfig keeps for the listener's life.
func TestRemovedKeyLeavesNoSecret(t *testing.T) {
	testenv.Require(t, testenv.MD5)
	testenv.Netns(t)
	k := Key{Peer: netip.MustParsePrefix("127.0.60.1/32"), Secret: []byte("fake-secret-removed")}
	l, err := (&ListenConfig{Keys: []Key{k}}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	held, ok := l.keys.md5.get(k.id())
	require.True(t, ok)
	dropped := make(chan struct{})
	runtime.AddCleanup(&held.Secret[0], func(ch chan struct{}) { close(ch) }, dropped)
	held = Key{}
	require.NoError(t, l.RemoveKey(k))
	for range 50 {
		runtime.GC()
		select {
		case <-dropped:
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("the listener still holds the removed key's secret")
}
