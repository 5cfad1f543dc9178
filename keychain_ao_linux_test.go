package tcpmd5_test

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/rawao"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// The KeyIDs of the roll-over tests: ours (SendID, RecvID) for the old and
// the new key; a peer's are the other way round.
const (
	oldSend, oldRecv = 1, 101
	newSend, newRecv = 2, 102
)

// rawPeer is a peer driven through the kernel's UAPI alone (package
// rawao), as a router is: its keys, its current key and its RNext are its
// own business.
type rawPeer struct {
	c      *net.TCPConn
	secret string
	sent   atomic.Int64 // bytes echoed back
	err    error
}

// raw runs op on the peer's socket.
func (p *rawPeer) raw(op func(fd int) error) error {
	rc, err := p.c.SyscallConn()
	if err != nil {
		return err
	}
	var oerr error
	return cmp.Or(rc.Control(func(fd uintptr) { oerr = op(int(fd)) }), oerr)
}

// addKey gives the peer its side of a key of ours: its SendID is our
// RecvID.
func (p *rawPeer) addKey(send, recv uint8) error {
	return p.raw(func(fd int) error {
		return rawao.Add(fd, unix.AF_INET, rawao.Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), SendID: send, RecvID: recv, Algorithm: "hmac(sha1)", Secret: []byte(p.secret)})
	})
}

// dialRaw connects a raw peer from src to addr holding its side of one
// key, send and recv its KeyIDs.
func dialRaw(t *testing.T, src, addr, secret string, send, recv uint8) (*rawPeer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), mustConnect)
	defer cancel()
	return dialRawContext(ctx, t, src, addr, secret, send, recv)
}

// talk writes a chunk to the peer's connection every interval and checks
// its echo, until stop is closed.
func (p *rawPeer) talk(stop <-chan struct{}, interval time.Duration) {
	chunk, back := make([]byte, 64), make([]byte, 64)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(interval):
		}
		for j := range chunk {
			chunk[j] = byte(i * j)
		}
		if err := p.c.SetDeadline(time.Now().Add(mustConnect)); err != nil {
			p.err = err
			return
		}
		if _, err := p.c.Write(chunk); err != nil {
			p.err = err
			return
		}
		if _, err := io.ReadFull(p.c, back); err != nil {
			p.err = err
			return
		}
		if string(back) != string(chunk) {
			p.err = fmt.Errorf("chunk %d came back changed", i)
			return
		}
		p.sent.Add(int64(len(back)))
	}
}

// TestKeyChainAORoll, on a kernel with TCP-AO, in a network namespace of
// its own: 1,000 live sessions on one listener, each with data flowing,
// their peers driven through the kernel's UAPI and switching as routers
// do. A new key joins the chain, accepted from now and sent from T; the
// old one's lifetimes end 8 s after T. Every session survives with every
// byte echoed; afterwards each one signs with the new key and asks for
// it, holds the old one no more, and is not lagging; a segment a peer
// signs with the old key is dropped on every session (TCPAOKeyNotFound),
// a new handshake with the old key is refused and one with the new key
// accepted. One more peer never learns the new key: it is reported
// lagging, and at the old key's end the key goes all the same, the new
// one made current.
func TestKeyChainAORoll(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const peers = 1000
	chain := tcpmd5.NewKeyChain()
	peerRange := "127.0.0.0/8"
	old := aoKey(t, "127.0.0.1", oldSend, oldRecv, "hmac(sha1)", secretA)
	old.Peer = netip.MustParsePrefix(peerRange)
	require.NoError(t, chain.SetAOKey(old, tcpmd5.Lifetime{}, tcpmd5.Lifetime{}))
	ln := listen(t, &tcpmd5.ListenConfig{KeyChain: chain}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)

	var all []*rawPeer
	for i := range peers + 1 {
		p, err := dialRaw(t, fmt.Sprintf("127.0.%d.%d", 64+i/250, 1+i%250), ln.Addr().String(), secretA, oldRecv, oldSend)
		require.NoError(t, err, "peer %d", i)
		all = append(all, p)
	}
	laggard, keen := all[peers], all[:peers]
	require.Eventually(t, func() bool { return len(chain.Sessions()) == peers+1 }, mustConnect, 50*time.Millisecond)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range all {
		wg.Add(1)
		go func() { defer wg.Done(); p.talk(stop, 500*time.Millisecond) }()
	}
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(halt)

	// The peers learn the new key first, as operators configure both ends
	// before the send lifetime begins.
	for _, p := range keen {
		p.secret = secretB
		require.NoError(t, p.addKey(newRecv, newSend))
	}
	// The new key goes on every session first, its send lifetime far
	// away; T is set once that is done, whatever it cost this machine.
	next := aoKey(t, "127.0.0.1", newSend, newRecv, "hmac(sha1)", secretB)
	next.Peer = old.Peer
	start := time.Now()
	require.NoError(t, chain.SetAOKey(next, tcpmd5.Lifetime{From: start.Add(time.Hour)}, tcpmd5.Lifetime{}))
	took := time.Since(start)
	t.Logf("adding the new key to %d sessions and the listener took %v", peers+1, took)
	// T and the old key's end leave the peers' own switch, a call each as
	// costly as that, room on a slow machine too.
	at := time.Now().Add(max(5*time.Second, 3*took))
	end := at.Add(max(8*time.Second, 10*took))
	require.NoError(t, chain.SetAOKey(next, tcpmd5.Lifetime{From: at}, tcpmd5.Lifetime{}))
	require.NoError(t, chain.SetAOKey(old, tcpmd5.Lifetime{Until: end}, tcpmd5.Lifetime{Until: end}))
	require.True(t, time.Now().Before(at), "changing lifetimes took past T")

	// At T each peer asks for the new key, as its own send lifetime begins.
	time.Sleep(time.Until(at))
	for _, p := range keen {
		require.NoError(t, p.raw(func(fd int) error { return rawao.SetRNext(fd, newSend) }))
	}
	require.True(t, time.Now().Before(end.Add(-2*time.Second)), "the peers' switch took past the old key's end: no time left to look")
	// A keen peer follows as soon as its next chunk is signed with the new
	// key; the laggard never does, talking or stalled.
	var last atomic.Pointer[string] // what the last look saw, for the failure's message
	ok := assert.Eventually(t, func() bool {
		var lagging []string
		var seen tcpmd5.ChainSession // the laggard's
		for _, s := range chain.Sessions() {
			if s.Remote.String() == laggard.c.LocalAddr().String() {
				seen = s
			}
			if s.Lagging {
				lagging = append(lagging, s.Remote.String())
			}
		}
		saw := fmt.Sprintf("%d peers lagging, the first %v; the laggard's session: current %d, rnext %d, keys %v, err %v",
			len(lagging), lagging[:min(len(lagging), 5)], seen.Current, seen.RNext, seen.AOKeys, seen.Err)
		last.Store(&saw)
		return len(lagging) == 1 && lagging[0] == laggard.c.LocalAddr().String()
	}, time.Until(end.Add(-time.Second)), 100*time.Millisecond, "the peer without the new key is lagging, and only it")
	if saw := last.Load(); !ok && saw != nil {
		t.Logf("before the old key's end: %s", *saw)
	}

	time.Sleep(time.Until(end.Add(time.Second)))
	for _, s := range chain.Sessions() {
		if s.Remote.String() == laggard.c.LocalAddr().String() {
			assert.True(t, s.Lagging, "the laggard is reported lagging after the old key's end")
			assert.Equal(t, uint8(newSend), s.Current, "the old key went with the new one made current")
			continue
		}
		assert.Equal(t, uint8(newSend), s.Current, "%s signs with the old key", s.Remote)
		assert.Equal(t, uint8(newRecv), s.RNext, "%s asks for the old key", s.Remote)
		assert.False(t, s.Lagging, "%s lags", s.Remote)
		assert.NoError(t, s.Err)
		require.Len(t, s.AOKeys, 1, "%s holds the old key still", s.Remote)
		assert.Equal(t, uint8(newSend), s.AOKeys[0].SendID)
	}
	laggard.c.Close() // its session is dead since the old key's end: its talk would wait out its deadline
	halt()
	for i, p := range keen {
		require.NoError(t, p.err, "peer %d's session did not survive", i)
		assert.Positive(t, p.sent.Load(), "peer %d moved no data", i)
	}

	// A segment signed with the old key is refused on every session: each
	// peer signs with it once more, and TCPAOKeyNotFound moves for each.
	before := counters(t)
	for _, p := range keen {
		require.NoError(t, p.raw(func(fd int) error { return rawao.SetCurrent(fd, oldRecv) }))
		require.NoError(t, p.c.SetDeadline(time.Now().Add(mustConnect)))
		_, err := p.c.Write([]byte("old"))
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		return before.Delta(counters(t), netstat.AOKeyNotFound)[netstat.AOKeyNotFound] >= peers
	}, mustConnect, 50*time.Millisecond, "segments signed with the old key were not all refused")
	for _, p := range keen { // back on the new key, the retransmission gets through
		require.NoError(t, p.raw(func(fd int) error { return rawao.SetCurrent(fd, newRecv) }))
		require.NoError(t, p.c.SetReadDeadline(time.Now().Add(mustConnect)))
		_, err := io.ReadFull(p.c, make([]byte, 3))
		require.NoError(t, err, "the segment refused with the old key is not retransmitted with the new one")
	}

	// New handshakes: the old key is refused, the new one accepted.
	before = counters(t)
	ctx, cancel := context.WithTimeout(context.Background(), refuseAfter)
	defer cancel()
	_, err := dialRawContext(ctx, t, "127.0.100.1", ln.Addr().String(), secretA, oldRecv, oldSend)
	require.Error(t, err, "a handshake with the old key was accepted")
	assert.Positive(t, before.Delta(counters(t), netstat.AOKeyNotFound)[netstat.AOKeyNotFound])
	p, err := dialRaw(t, "127.0.100.2", ln.Addr().String(), secretB, newRecv, newSend)
	require.NoError(t, err)
	p.talk(closedAfter(300*time.Millisecond), 50*time.Millisecond)
	require.NoError(t, p.err)
	assert.Positive(t, p.sent.Load())
}

// closedAfter returns a channel closed after d.
func closedAfter(d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}

// dialRawContext is dialRaw within ctx.
func dialRawContext(ctx context.Context, t *testing.T, src, addr, secret string, send, recv uint8) (*rawPeer, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	d.SetMultipathTCP(false)
	d.Control = func(_, _ string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			err = rawao.Add(int(fd), unix.AF_INET, rawao.Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), SendID: send, RecvID: recv, Algorithm: "hmac(sha1)", Secret: []byte(secret)})
		})
		return cmp.Or(cerr, err)
	}
	c, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &rawPeer{c: c.(*net.TCPConn), secret: secret}, nil
}

// rawListener is a listener on 127.0.0.1 driven through the raw UAPI
// alone, holding the peer's side of the old and the new key for 127.0.0.2,
// and the connections it accepted, echoed.
func rawListener(t *testing.T) (net.Listener, <-chan *net.TCPConn) {
	var rawErr error
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return cmp.Or(c.Control(func(fd uintptr) {
			for _, ids := range [][2]uint8{{oldRecv, oldSend}, {newRecv, newSend}} {
				rawErr = cmp.Or(rawErr, rawao.Add(int(fd), unix.AF_INET, rawao.Key{Peer: netip.MustParsePrefix("127.0.0.2/32"), SendID: ids[0], RecvID: ids[1], Algorithm: "hmac(sha1)", Secret: []byte(secretA)}))
			}
		}), rawErr)
	}}
	lc.SetMultipathTCP(false)
	rl, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { rl.Close() })
	return rl, serveEcho(t, rl)
}

// TestKeyChainAODialer, on a kernel with TCP-AO: a Dialer with a chain
// signs the SYN with the preferred key, the one whose send lifetime began
// last, whatever the order the keys joined the chain; a raw listener's
// connection shows which key verified it.
func TestKeyChainAODialer(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	rl, accepted := rawListener(t)

	chain := tcpmd5.NewKeyChain()
	now := time.Now()
	require.NoError(t, chain.SetAOKey(aoKey(t, "127.0.0.1", newSend, newRecv, "hmac(sha1)", secretA), tcpmd5.Lifetime{From: now.Add(-time.Minute)}, tcpmd5.Lifetime{}))
	require.NoError(t, chain.SetAOKey(aoKey(t, "127.0.0.1", oldSend, oldRecv, "hmac(sha1)", secretA), tcpmd5.Lifetime{From: now.Add(-time.Hour)}, tcpmd5.Lifetime{}))
	d := dialer("127.0.0.2")
	d.KeyChain = chain
	c, err := d.Dial("tcp4", rl.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	ping(t, c)
	assert.Equal(t, uint8(newSend), aoStats(t, c).Current, "the dialer signs with the key whose send lifetime began last")
	server := <-accepted
	assert.Equal(t, uint8(newRecv), aoStats(t, server).Current, "the raw listener answers with the key we asked for")
	ss := chain.Sessions()
	require.Len(t, ss, 1)
	assert.Len(t, ss[0].AOKeys, 2)
}

// TestKeyChainAODialedRoll, on a kernel with TCP-AO: a connection a
// Dialer with a chain made is rolled as an accepted one is. The raw
// listener's side holds both keys and asks for the new one at T; the
// session is lagging from the switch until a segment of the peer's
// verifies with the new key; after the old key's end the dialled
// connection signs with the new key, asks for it, holds it alone, and data
// still flows.
func TestKeyChainAODialedRoll(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	rl, accepted := rawListener(t)

	chain := tcpmd5.NewKeyChain()
	old := aoKey(t, "127.0.0.1", oldSend, oldRecv, "hmac(sha1)", secretA)
	require.NoError(t, chain.SetAOKey(old, tcpmd5.Lifetime{}, tcpmd5.Lifetime{}))
	d := dialer("127.0.0.2")
	d.KeyChain = chain
	c, err := d.Dial("tcp4", rl.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	ping(t, c)
	server := &rawPeer{c: <-accepted}

	at := time.Now().Add(2 * time.Second)
	end := at.Add(2 * time.Second)
	require.NoError(t, chain.SetAOKey(aoKey(t, "127.0.0.1", newSend, newRecv, "hmac(sha1)", secretA), tcpmd5.Lifetime{From: at}, tcpmd5.Lifetime{}))
	require.NoError(t, chain.SetAOKey(old, tcpmd5.Lifetime{Until: end}, tcpmd5.Lifetime{Until: end}))
	time.Sleep(time.Until(at))
	require.NoError(t, server.raw(func(fd int) error { return rawao.SetRNext(fd, newSend) }))
	// Switched, and no segment of the peer's verified with the new key
	// yet: lagging, until the peer speaks.
	require.Eventually(t, func() bool {
		ss := chain.Sessions()
		return len(ss) == 1 && ss[0].Current == newSend
	}, mustConnect, 20*time.Millisecond, "the chain did not switch the connection at T")
	assert.True(t, chain.Sessions()[0].Lagging, "a peer that has said nothing since the switch is reported following")
	ping(t, c)
	assert.False(t, chain.Sessions()[0].Lagging, "a peer whose echo came signed with the new key is reported lagging")
	for time.Now().Before(end.Add(time.Second)) {
		ping(t, c)
		time.Sleep(100 * time.Millisecond)
	}
	st := aoStats(t, c)
	assert.Equal(t, uint8(newSend), st.Current)
	assert.Equal(t, uint8(newRecv), st.RNext)
	ss := chain.Sessions()
	require.Len(t, ss, 1)
	require.Len(t, ss[0].AOKeys, 1, "the dialled connection holds the old key still")
	assert.Equal(t, uint8(newSend), ss[0].AOKeys[0].SendID)
	assert.False(t, ss[0].Lagging)
	assert.NoError(t, ss[0].Err)
}
