package tcpmd5_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
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
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
)

// The algorithms of these tests: RFC 5926's two and a stronger one.
var aoAlgorithms = []string{"hmac(sha1)", "cmac(aes128)", "hmac(sha256)"}

// requireAO skips t where the kernel has no TCP-AO (by design: only the
// kernels built with it are declared to have it).
func requireAO(t testing.TB) {
	t.Helper()
	testenv.Require(t, testenv.AO)
	require.True(t, tcpmd5.AOSupported(), "AOSupported disagrees with the feature probe")
}

// aoKey is the AO key for peer, which we sign with sendID and verify with
// recvID.
func aoKey(t testing.TB, peer string, sendID, recvID uint8, alg, secret string) tcpmd5.AOKey {
	t.Helper()
	a, err := netip.ParseAddr(peer)
	require.NoError(t, err)
	return tcpmd5.AOKey{Peer: netip.PrefixFrom(a, a.BitLen()), SendID: sendID, RecvID: recvID, Algorithm: alg, Secret: []byte(secret)}
}

// aoDialer dials from src with keys.
func aoDialer(src string, keys ...tcpmd5.AOKey) *tcpmd5.Dialer {
	d := dialer(src)
	d.AOKeys = keys
	return d
}

// aoStats reads AOInfo of c.
func aoStats(t testing.TB, c net.Conn) tcpmd5.AOStats {
	t.Helper()
	st, err := tcpmd5.AOInfo(c.(*net.TCPConn))
	require.NoError(t, err)
	return st
}

// TestAOConnects: with each algorithm the kernel offers, a listener and a
// dialer holding matching AO keys connect both ways over IPv4, IPv6 and a
// dual-stack listener; both ends report the KeyIDs and verified segments,
// and TCPAOGood moves while no drop counter does.
func TestAOConnects(t *testing.T) {
	requireAO(t)
	for _, alg := range aoAlgorithms {
		for _, fam := range []struct{ name, network, addr, peer, host string }{
			{"IPv4", "tcp4", "127.0.0.1:0", "127.0.50.1", "127.0.0.1"},
			{"IPv6", "tcp6", "[::1]:0", "::1", "::1"},
			{"dual-stack", "tcp", "[::]:0", "127.0.50.1", "127.0.0.1"},
		} {
			t.Run(alg+"/"+fam.name, func(t *testing.T) {
				t.Parallel()
				if fam.network != "tcp4" {
					requireIPv6(t)
				}
				testenv.Netns(t)
				lc := &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey(t, fam.peer, 1, 2, alg, secretA)}}
				ln, err := lc.Listen(context.Background(), fam.network, fam.addr)
				if errors.Is(err, unix.ENOENT) {
					t.Skipf("the kernel's crypto API has no %s: %v", alg, err)
				}
				require.NoError(t, err)
				accepted := serveEcho(t, ln)
				before := counters(t)
				port := ln.Addr().(*net.TCPAddr).Port
				c, err := aoDialer(fam.peer, aoKey(t, fam.host, 2, 1, alg, secretA)).Dial(fam.network, net.JoinHostPort(fam.host, itoa(port)))
				require.NoError(t, err)
				defer c.Close()
				ping(t, c)
				server := <-accepted
				cs, ss := aoStats(t, c), aoStats(t, server)
				assert.Equal(t, uint8(2), cs.Current, "the dialer signs with its SendID")
				assert.Equal(t, uint8(1), cs.RNext, "and asks for the listener's")
				assert.Equal(t, uint8(1), ss.Current)
				assert.Equal(t, uint8(2), ss.RNext)
				assert.Positive(t, cs.Good)
				assert.Positive(t, ss.Good)
				assert.Zero(t, cs.Bad+ss.Bad+cs.KeyNotFound+ss.KeyNotFound)
				delta := before.Delta(counters(t), netstat.AOGood, netstat.AOBad, netstat.AOKeyNotFound, netstat.AORequired)
				assert.Positive(t, delta[netstat.AOGood])
				assert.Zero(t, delta[netstat.AOBad]+delta[netstat.AOKeyNotFound]+delta[netstat.AORequired], "%v", delta)
			})
		}
	}
}

// TestAORefused: every way of not matching the listener's AO key is
// dropped by the kernel, and the counter for that way moves.
func TestAORefused(t *testing.T) {
	requireAO(t)
	const peer = "127.0.50.1"
	right := func(t testing.TB) tcpmd5.AOKey { return aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA) }
	for _, tc := range []struct {
		name    string
		key     func(t testing.TB) *tcpmd5.AOKey // nil: unsigned
		md5     bool                             // sign with MD5 instead
		from    string                           // the dialer's address, if not peer
		counter string
	}{
		{"wrong secret", func(t testing.TB) *tcpmd5.AOKey { k := right(t); k.Secret = []byte(secretB); return &k }, false, "", netstat.AOBad},
		{"wrong SendID", func(t testing.TB) *tcpmd5.AOKey { k := right(t); k.SendID = 7; return &k }, false, "", netstat.AOKeyNotFound},
		{"wrong algorithm", func(t testing.TB) *tcpmd5.AOKey { k := right(t); k.Algorithm = "cmac(aes128)"; return &k }, false, "", netstat.AOBad},
		{"wrong MAC length", func(t testing.TB) *tcpmd5.AOKey { k := right(t); k.MACLen = 16; return &k }, false, "", netstat.AOBad},
		{"unsigned", func(testing.TB) *tcpmd5.AOKey { return nil }, false, "", netstat.AORequired},
		{"MD5 instead", func(testing.TB) *tcpmd5.AOKey { return nil }, true, "", netstat.MD5Unexpected},
		// Accept takes a connection for AO only from a peer an AO key
		// covers: the kernel completes no AO handshake with another.
		{"the right key from a peer no key covers", func(t testing.TB) *tcpmd5.AOKey { k := right(t); return &k }, false, "127.0.50.2", netstat.AOKeyNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			ln := listen(t, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey(t, peer, 1, 2, "hmac(sha1)", secretA)}}, "tcp4", "127.0.0.1:0")
			d := dialer(cmp.Or(tc.from, peer))
			d.AllowUnsigned = true
			if k := tc.key(t); k != nil {
				d.AOKeys = []tcpmd5.AOKey{*k}
			}
			if tc.md5 {
				d.Keys = []tcpmd5.Key{key(t, "127.0.0.1", secretA)}
			}
			dropDial(t, d, "tcp4", ln.Addr().String(), tc.counter)
			// The right key still connects.
			serveEcho(t, ln)
			requireEcho(t, aoDialer(peer, right(t)), ln.Addr().String())
		})
	}
}

// TestAOBesideMD5: one listener serves an MD5 peer and an AO peer; each
// signing the other way is refused; keys of both kinds for overlapping
// peers are refused with an error naming both, at Listen, at SetKey and
// SetAOKey, and at Dial.
func TestAOBesideMD5(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const md5Peer, aoPeer = "127.0.51.1", "127.0.51.2"
	lc := &tcpmd5.ListenConfig{
		Keys:   []tcpmd5.Key{key(t, md5Peer, secretA)},
		AOKeys: []tcpmd5.AOKey{aoKey(t, aoPeer, 1, 2, "hmac(sha1)", secretB)},
	}
	ln := listen(t, lc, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()
	requireEcho(t, dialer(md5Peer, key(t, "127.0.0.1", secretA)), addr)
	requireEcho(t, aoDialer(aoPeer, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretB)), addr)
	dropDial(t, aoDialer(md5Peer, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA)), "tcp4", addr, netstat.AOKeyNotFound)
	dropDial(t, dialer(aoPeer, key(t, "127.0.0.1", secretB)), "tcp4", addr, "")

	// Overlapping peers of both kinds.
	err := ln.SetAOKey(aoKey(t, md5Peer, 3, 4, "hmac(sha1)", secretA))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "MD5 key "+md5Peer+" and AO key "+md5Peer+" send 3 recv 4")
	err = ln.SetKey(tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.51.0/24"), Secret: []byte(secretA)})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AO key "+aoPeer+" send 1 recv 2")
	_, err = (&tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, aoPeer, secretA)}, AOKeys: lc.AOKeys}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "a peer is MD5 or AO, not both")
	d := aoDialer(aoPeer, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretB))
	d.Keys = []tcpmd5.Key{key(t, "127.0.0.1", secretA)}
	_, err = d.Dial("tcp4", addr)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "a peer is MD5 or AO, not both")
	for _, s := range []string{secretA, secretB} {
		assert.NotContains(t, err.Error(), s)
	}
	assert.Len(t, ln.Keys(), 1)
	assert.Len(t, ln.AOKeys(), 1)
}

// TestAOUnsignedPolicy: with AllowUnsigned, an unsigned peer no key covers
// is handed over, and an unsigned peer an AO key covers never is (the
// kernel drops its SYN: TCPAORequired).
func TestAOUnsignedPolicy(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	lc := &tcpmd5.ListenConfig{AllowUnsigned: true, AOKeys: []tcpmd5.AOKey{aoKey(t, "127.0.52.1", 1, 2, "hmac(sha1)", secretA)}}
	ln := listen(t, lc, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	requireEcho(t, dialer("127.0.52.2"), ln.Addr().String())
	d := dialer("127.0.52.1")
	dropDial(t, d, "tcp4", ln.Addr().String(), netstat.AORequired)
}

// TestAOPrefixKeys: a listener's AO key for a /24 lets every peer in it
// connect, and SetAOKey, RemoveAOKey and AOKeys work on the live listener.
func TestAOPrefixKeys(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	range24 := tcpmd5.AOKey{Peer: netip.MustParsePrefix("127.0.53.0/24"), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", Secret: []byte(secretA)}
	require.NoError(t, ln.SetAOKey(range24))
	for _, src := range []string{"127.0.53.1", "127.0.53.200"} {
		requireEcho(t, aoDialer(src, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA)), ln.Addr().String())
	}
	// Replacing the secret: the kernel deletes, then adds.
	range24.Secret = []byte(secretB)
	require.NoError(t, ln.SetAOKey(range24))
	require.Len(t, ln.AOKeys(), 1)
	assert.Equal(t, secretB, string(ln.AOKeys()[0].Secret))
	dropDial(t, aoDialer("127.0.53.1", aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA)), "tcp4", ln.Addr().String(), netstat.AOBad)
	requireEcho(t, aoDialer("127.0.53.1", aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretB)), ln.Addr().String())
	require.NoError(t, ln.RemoveAOKey(range24))
	require.NoError(t, ln.RemoveAOKey(range24), "removing what is not there is not an error")
	assert.Empty(t, ln.AOKeys())
}

// TestAOKeyChangeUnderLoad changes the key of a live connection while data
// flows both ways, the hitless way: both ends add the new key, each asks
// for it with RNext, each kernel follows, then the old key goes. Not a byte
// is lost or reset, and both ends end up signing with the new KeyIDs.
func TestAOKeyChangeUnderLoad(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const peer = "127.0.54.1"
	oldServer, oldClient := aoKey(t, peer, 1, 2, "hmac(sha1)", secretA), aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA)
	newServer, newClient := aoKey(t, peer, 11, 12, "hmac(sha256)", secretB), aoKey(t, "127.0.0.1", 12, 11, "hmac(sha256)", secretB)
	ln := listen(t, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{oldServer}}, "tcp4", "127.0.0.1:0")
	accepted := serveEcho(t, ln)
	c, err := aoDialer(peer, oldClient).Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	server := <-accepted
	client := c.(*net.TCPConn)

	// Data flows all along, before, during and after the change: a writer
	// that goes on until the old keys are gone and a megabyte more, and a
	// reader that checks every byte the echo returns.
	changed := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		buf := make([]byte, 4096)
		n, after := 0, -1
		for after < 1<<20 {
			for i := range buf {
				buf[i] = byte(n + i)
			}
			if _, err := client.Write(buf); !assert.NoError(t, err) {
				break
			}
			n += len(buf)
			select {
			case <-changed:
				after += len(buf)
			default:
				time.Sleep(100 * time.Microsecond)
			}
		}
		assert.NoError(t, client.CloseWrite())
		sent <- n
	}()
	received := make(chan int, 1)
	go func() {
		buf := make([]byte, 65536)
		n := 0
		for {
			m, err := client.Read(buf)
			for i := range m {
				if buf[i] != byte(n+i) {
					t.Errorf("byte %d is %d, want %d", n+i, buf[i], byte(n+i))
					received <- n
					return
				}
			}
			n += m
			if err != nil {
				assert.ErrorIs(t, err, io.EOF, "the connection ended cleanly, not reset")
				received <- n
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // data flows under the old keys first
	before := aoStats(t, client).Good

	require.NoError(t, tcpmd5.AddAOKey(server, newServer))
	require.NoError(t, tcpmd5.AddAOKey(client, newClient))
	require.NoError(t, tcpmd5.SetAORNext(server, newServer.RecvID))
	require.NoError(t, tcpmd5.SetAORNext(client, newClient.RecvID))
	require.Eventually(t, func() bool {
		return aoStats(t, client).Current == newClient.SendID && aoStats(t, server).Current == newServer.SendID
	}, mustConnect, 10*time.Millisecond, "both ends follow the other's RNext")
	require.NoError(t, tcpmd5.RemoveAOKey(client, oldClient))
	require.NoError(t, tcpmd5.RemoveAOKey(server, oldServer))
	err = tcpmd5.RemoveAOKey(client, newClient)
	require.Error(t, err, "the key in use cannot go")
	assert.Contains(t, err.Error(), "SetAORNext, SetAOCurrent first")
	ss := aoStats(t, server) // the echo closes the server's side once the client's ends
	assert.Zero(t, ss.Bad+ss.KeyNotFound)
	close(changed)

	total := <-sent
	assert.Equal(t, total, <-received, "every byte came back, in order")
	assert.Greater(t, total, 1<<20)
	assert.Greater(t, aoStats(t, client).Good, before, "segments verified after the change")
	cs := aoStats(t, client)
	assert.Equal(t, newClient.SendID, cs.Current)
	assert.Equal(t, newClient.RecvID, cs.RNext)
	assert.Zero(t, cs.Bad+cs.KeyNotFound)
}

// TestAOOnOneConnectionErrors: the per-connection calls refuse what the
// kernel refuses, in words: a SendID with no key, a socket without AO.
func TestAOOnOneConnectionErrors(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const peer = "127.0.55.1"
	ln := listen(t, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey(t, peer, 1, 2, "hmac(sha1)", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	c, err := aoDialer(peer, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA)).Dial("tcp4", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	tc := c.(*net.TCPConn)
	err = tcpmd5.SetAOCurrent(tc, 99)
	require.ErrorIs(t, err, syscall.ENOENT)
	assert.Contains(t, err.Error(), "no AO key with SendID 99")
	err = tcpmd5.SetAORNext(tc, 98)
	require.ErrorIs(t, err, syscall.ENOENT)
	assert.Contains(t, err.Error(), "no AO key with RecvID 98")
	require.NoError(t, tcpmd5.RemoveAOKey(tc, aoKey(t, "127.0.0.1", 50, 51, "hmac(sha1)", secretA)), "absent is not an error")

	plain := plainListener(t, "127.0.0.1:0", nil)
	pc, err := net.Dial("tcp4", plain.Addr().String())
	require.NoError(t, err)
	defer pc.Close()
	_, err = tcpmd5.AOInfo(pc.(*net.TCPConn))
	require.ErrorIs(t, err, syscall.ENOENT, "a connection without TCP-AO has no AO state")
	assert.Error(t, tcpmd5.AddAOKey(nil, aoKey(t, peer, 1, 2, "hmac(sha1)", secretA)))
}

// TestAOAcceptOrderings: whatever changes between the handshake and
// Accept, a connection is handed over only if the kernel verified its
// handshake, with an AO key or an MD5 key on a listener that holds both
// kinds, and an unsigned one never once a key covers its peer.
func TestAOAcceptOrderings(t *testing.T) {
	requireAO(t)
	t.Parallel()
	const peer = "127.0.56.9"
	ao := func(p string, secret string) tcpmd5.AOKey {
		if !strings.Contains(p, "/") {
			p += "/32"
		}
		return tcpmd5.AOKey{Peer: netip.MustParsePrefix(p), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", Secret: []byte(secret)}
	}
	dialAO := aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA)
	group := make([]tcpmd5.AOKey, 300)
	for i := range group {
		group[i] = ao(fmt.Sprintf("127.57.%d.%d", 1+i/250, 1+i%250), secretB)
	}
	md5Others := make([]tcpmd5.Key, 20)
	for i := range md5Others {
		md5Others[i] = key(t, fmt.Sprintf("127.58.0.%d", 1+i), secretB)
	}
	tests := []struct {
		name       string
		lc         tcpmd5.ListenConfig
		dialAO     *tcpmd5.AOKey
		dialMD5    *tcpmd5.Key
		change     func(ln *tcpmd5.Listener) error
		handedOver bool
	}{
		{
			name:   "unsigned, then an AO host key for the peer",
			lc:     tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{ao("127.0.56.1", secretA)}},
			change: func(ln *tcpmd5.Listener) error { return ln.SetAOKey(ao(peer, secretA)) },
		},
		{
			name:   "unsigned and allowed, then an AO prefix key covers the peer",
			lc:     tcpmd5.ListenConfig{AllowUnsigned: true},
			change: func(ln *tcpmd5.Listener) error { return ln.SetAOKey(ao("127.0.56.0/24", secretA)) },
		},
		{
			name:       "AO, then the key is removed",
			lc:         tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{ao(peer, secretA)}},
			dialAO:     &dialAO,
			change:     func(ln *tcpmd5.Listener) error { return ln.RemoveAOKey(ao(peer, "")) },
			handedOver: true,
		},
		{
			name:       "AO, then the secret changes",
			lc:         tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{ao(peer, secretA)}},
			dialAO:     &dialAO,
			change:     func(ln *tcpmd5.Listener) error { return ln.SetAOKey(ao(peer, secretB)) },
			handedOver: true,
		},
		{
			name:   "AO, then another AO key for the peer, other KeyIDs",
			lc:     tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{ao(peer, secretA)}},
			dialAO: &dialAO,
			change: func(ln *tcpmd5.Listener) error {
				k := ao(peer, secretB)
				k.SendID, k.RecvID = 3, 4
				return ln.SetAOKey(k)
			},
			handedOver: true,
		},
		{
			name:       "unsigned and allowed, then an AO key for another peer",
			lc:         tcpmd5.ListenConfig{AllowUnsigned: true, AOKeys: []tcpmd5.AOKey{ao("127.0.56.1", secretA)}},
			change:     func(ln *tcpmd5.Listener) error { return ln.SetAOKey(ao("127.0.56.2", secretA)) },
			handedOver: true,
		},
		{
			name:       "AO on a group of sockets, then the group grows",
			lc:         tcpmd5.ListenConfig{AOKeys: append([]tcpmd5.AOKey{ao(peer, secretA)}, group...)},
			dialAO:     &dialAO,
			change:     func(ln *tcpmd5.Listener) error { return growGroup(ln, 1000) },
			handedOver: true,
		},
		{
			name:       "MD5 on a listener with AO keys too",
			lc:         tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, peer, secretA)}, AOKeys: group[:40]},
			dialMD5:    &tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: []byte(secretA)},
			change:     func(*tcpmd5.Listener) error { return nil },
			handedOver: true,
		},
		{
			name:       "AO on a listener with MD5 keys too",
			lc:         tcpmd5.ListenConfig{Keys: md5Others, AOKeys: []tcpmd5.AOKey{ao(peer, secretA)}},
			dialAO:     &dialAO,
			change:     func(*tcpmd5.Listener) error { return nil },
			handedOver: true,
		},
		{
			name:   "unsigned on a listener with both kinds, then an MD5 key for the peer",
			lc:     tcpmd5.ListenConfig{AllowUnsigned: true, Keys: md5Others, AOKeys: group[:40]},
			change: func(ln *tcpmd5.Listener) error { return ln.SetKey(key(t, peer, secretA)) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			ln := listen(t, &tt.lc, "tcp4", "127.0.0.1:0")
			d := dialer(peer)
			switch {
			case tt.dialAO != nil:
				d.AOKeys = []tcpmd5.AOKey{*tt.dialAO}
			case tt.dialMD5 != nil:
				d.Keys = []tcpmd5.Key{*tt.dialMD5}
			default:
				d.AllowUnsigned = true
			}
			acceptAfter(t, ln, d, tt.change, tt.handedOver)
		})
	}
}

// TestTenThousandAOPeers gives one listener 10,000 AO peers with their own
// keys, half at Listen and half live, spread over its group of sockets as
// MD5 keys are, and dials every one of them; unsigned and wrong-key peers
// are refused.
func TestTenThousandAOPeers(t *testing.T) {
	requireAO(t)
	t.Parallel()
	const peers = 10000
	addr := func(n int) netip.Addr { return peer4(6, n) }
	keyOf := func(n int) tcpmd5.AOKey {
		return tcpmd5.AOKey{Peer: netip.PrefixFrom(addr(n), 32), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", Secret: peerSecret(n)}
	}
	var atListen []tcpmd5.AOKey
	for n := range peers / 2 {
		atListen = append(atListen, keyOf(n))
	}
	ln := listen(t, &tcpmd5.ListenConfig{AOKeys: atListen}, "tcp4", "127.0.0.1:0")
	for n := peers / 2; n < peers; n++ {
		require.NoError(t, ln.SetAOKey(keyOf(n)))
	}
	require.Len(t, ln.AOKeys(), peers)
	sockets := listeningSockets(t, port(ln))
	assert.Greater(t, sockets, 1, "the listener did not spread %d AO keys", peers)
	accepted := acceptAndReset(t, ln)
	target := ln.Addr().String()
	dial := func(n int, secret []byte, timeout time.Duration) (net.Conn, error) {
		d := dialer(addr(n).String())
		d.Timeout = timeout
		if secret == nil {
			d.AllowUnsigned = true
		} else {
			d.AOKeys = []tcpmd5.AOKey{{Peer: netip.MustParsePrefix("127.0.0.1/32"), SendID: 2, RecvID: 1, Algorithm: "hmac(sha1)", Secret: secret}}
		}
		return d.Dial("tcp4", target)
	}
	start := time.Now()
	failed := dialEach(peers, nil, func(n int) (net.Conn, error) { return dial(n, peerSecret(n), 5*time.Second) })
	for n, err := range failed {
		t.Errorf("peer %d (%s): %v", n, addr(n), err)
		if len(failed) > 5 {
			t.Fatalf("%d of %d AO peers failed to connect", len(failed), peers)
		}
	}
	t.Logf("%d AO handshakes over %d sockets in %v", peers, sockets, time.Since(start))
	testkit.RequireAllAccepted(t, accepted, peers)
	for n := 0; n < peers; n += peers/8 + 1 {
		for _, secret := range [][]byte{nil, []byte("fake-secret-wrong")} {
			c, err := dial(n, secret, refuseAfter)
			requireRefused(t, c, err)
		}
	}
	assert.Zero(t, ln.RefusedUnsigned())
	assert.EqualValues(t, peers, accepted.Load())
}

// TestAODialerChoosesItsFirstKey: with several AO keys for the destination,
// the Dialer signs with the first in AOKeys order and asks the peer for
// its RecvID, in either order; the listener follows the RNext it asked for.
func TestAODialerChoosesItsFirstKey(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const peer = "127.0.59.1"
	ln := listen(t, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{
		aoKey(t, peer, 1, 2, "hmac(sha1)", secretA),
		aoKey(t, peer, 3, 4, "hmac(sha1)", secretB),
	}}, "tcp4", "127.0.0.1:0")
	accepted := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	first, second := aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA), aoKey(t, "127.0.0.1", 4, 3, "hmac(sha1)", secretB)
	for _, keys := range [][]tcpmd5.AOKey{{first, second}, {second, first}} {
		c, err := aoDialer(peer, keys...).Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		server := <-accepted
		go func() { _, _ = io.Copy(server, server) }()
		ping(t, c)
		cs := aoStats(t, c)
		assert.Equal(t, keys[0].SendID, cs.Current, "the dialer signs with its first key")
		assert.Equal(t, keys[0].RecvID, cs.RNext, "and asks for the listener's side of it")
		assert.Equal(t, keys[0].RecvID, aoStats(t, server).Current, "the listener follows")
		c.Close()
		server.Close()
	}
}

// TestAOAgainstTheRawUAPI holds tcpmd5 against the kernel's UAPI driven
// independently (package rawao lays the structs out by hand): our Listener
// takes a raw socket's AO connection and our Dialer reaches a raw
// listener, over IPv4 and a dual-stack socket; with another secret on the
// raw side, neither connects and TCPAOBad moves.
func TestAOAgainstTheRawUAPI(t *testing.T) {
	requireAO(t)
	for _, fam := range []struct {
		name    string
		family  int
		network string
		bind    string
	}{{"IPv4", unix.AF_INET, "tcp4", "127.0.0.1:0"}, {"dual-stack raw socket", unix.AF_INET6, "tcp", "[::]:0"}} {
		for _, secret := range []string{secretA, secretB} {
			t.Run(fam.name+"/"+map[string]string{secretA: "same secret", secretB: "other secret"}[secret], func(t *testing.T) {
				t.Parallel()
				if fam.family == unix.AF_INET6 {
					requireIPv6(t)
				}
				testenv.Netns(t)
				const peer = "127.0.60.1"
				raw := func(family int, p string, send, recv uint8) func(string, string, syscall.RawConn) error {
					return func(_, _ string, c syscall.RawConn) error {
						var err error
						cerr := c.Control(func(fd uintptr) {
							err = rawao.Add(int(fd), family, rawao.Key{Peer: netip.MustParsePrefix(p), SendID: send, RecvID: recv, Algorithm: "hmac(sha1)", Secret: []byte(secret)})
						})
						return cmp.Or(cerr, err)
					}
				}
				// A raw dialer against our Listener.
				ln := listen(t, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey(t, peer, 1, 2, "hmac(sha1)", secretA)}}, "tcp4", "127.0.0.1:0")
				serveEcho(t, ln)
				rd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(peer)}, Timeout: mustConnect, Control: raw(unix.AF_INET, "127.0.0.1/32", 2, 1)}
				rd.SetMultipathTCP(false)
				// Our Dialer against a raw listener.
				lc := net.ListenConfig{Control: raw(fam.family, peer+"/32", 1, 2)}
				lc.SetMultipathTCP(false)
				rl, err := lc.Listen(context.Background(), fam.network, fam.bind)
				require.NoError(t, err)
				t.Cleanup(func() { rl.Close() })
				serveEcho(t, rl)
				target := net.JoinHostPort("127.0.0.1", itoa(rl.Addr().(*net.TCPAddr).Port))
				ours := aoDialer(peer, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA))
				if secret == secretA {
					requireEcho(t, rd, ln.Addr().String())
					requireEcho(t, ours, target)
					return
				}
				rd.Timeout = refuseAfter
				before := counters(t)
				c, err := rd.Dial("tcp4", ln.Addr().String())
				requireRefused(t, c, err)
				dropDial(t, ours, "tcp4", target, "")
				assert.Positive(t, before.Delta(counters(t), netstat.AOBad)[netstat.AOBad], "TCPAOBad did not move")
			})
		}
	}
}

// TestAOKeysChurnUnderLoad: goroutines add and remove AO keys on a live
// listener, growing and using its group, while a keyed peer dials it again
// and again: every dial connects, and the listener ends with exactly the
// keys that were left.
func TestAOKeysChurnUnderLoad(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const peer = "127.0.61.1"
	ln := listen(t, &tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey(t, peer, 1, 2, "hmac(sha1)", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	other := func(w, i int) tcpmd5.AOKey {
		return tcpmd5.AOKey{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 62, byte(w), byte(i)}), 32), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", Secret: []byte(secretB)}
	}
	const workers, rounds = 4, 200
	stop := make(chan struct{})
	var churn sync.WaitGroup
	for w := range workers {
		churn.Go(func() {
			for i := range rounds {
				assert.NoError(t, ln.SetAOKey(other(w, i)))
				if i%2 == 1 {
					assert.NoError(t, ln.RemoveAOKey(other(w, i-1)))
				}
			}
		})
	}
	d := aoDialer(peer, aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA))
	dials := 0
	go func() { churn.Wait(); close(stop) }()
	for done := false; !done; {
		select {
		case <-stop:
			done = true
		default:
		}
		requireEcho(t, d, ln.Addr().String())
		dials++
	}
	assert.Len(t, ln.AOKeys(), 1+workers*rounds/2, "the peer's key and every odd-numbered one")
	t.Logf("%d dials while %d goroutines changed AO keys %d times each", dials, workers, rounds*3/2)
}

// TestAOIPv4KeyOnIPv6OnlySocket: an IPv4 AO key on a tcp6 socket, which no
// IPv4 peer can reach, is refused as an MD5 key is.
func TestAOIPv4KeyOnIPv6OnlySocket(t *testing.T) {
	requireAO(t)
	requireIPv6(t)
	_, err := (&tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{aoKey(t, "127.0.63.1", 1, 2, "hmac(sha1)", secretA)}}).Listen(context.Background(), "tcp6", "[::1]:0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "AO key 127.0.63.1 send 1 recv 2: the socket is IPv6-only (tcp6)")
}

// TestAOControl: AOControl keys a plain net.ListenConfig and a plain
// net.Dialer, as Control does for MD5. Of several keys for the
// destination the first signs the SYN, in either order, and the listener
// follows; a wrong secret is dropped and TCPAOBad moves; a key that does
// not normalize fails the dial before any SYN.
func TestAOControl(t *testing.T) {
	requireAO(t)
	testenv.Netns(t)
	const peer = "127.0.61.1"
	ln := plainListener(t, "127.0.0.1:0", tcpmd5.AOControl(
		aoKey(t, peer, 1, 2, "hmac(sha1)", secretA),
		aoKey(t, peer, 3, 4, "hmac(sha1)", secretB),
	))
	accepted := serveEcho(t, ln)
	first, second := aoKey(t, "127.0.0.1", 2, 1, "hmac(sha1)", secretA), aoKey(t, "127.0.0.1", 4, 3, "hmac(sha1)", secretB)
	for _, keys := range [][]tcpmd5.AOKey{{first, second}, {second, first}} {
		d := net.Dialer{Timeout: mustConnect, LocalAddr: &net.TCPAddr{IP: net.ParseIP(peer)}, Control: tcpmd5.AOControl(keys...)}
		c, err := d.Dial("tcp4", ln.Addr().String())
		require.NoError(t, err)
		ping(t, c)
		server := <-accepted
		cs := aoStats(t, c)
		assert.Equal(t, keys[0].SendID, cs.Current, "the first key signs")
		assert.Positive(t, cs.Good)
		assert.Equal(t, keys[0].RecvID, aoStats(t, server).Current, "the listener follows")
		c.Close()
	}

	wrong := first
	wrong.Secret = []byte(secretB)
	d := dialer(peer)
	d.AllowUnsigned = true // the hook's key signs, not the Dialer's
	d.Control = tcpmd5.AOControl(wrong)
	dropDial(t, d, "tcp4", ln.Addr().String(), netstat.AOBad)

	nd := net.Dialer{Timeout: mustConnect, Control: tcpmd5.AOControl(tcpmd5.AOKey{Secret: []byte(secretA)})}
	_, err := nd.Dial("tcp4", ln.Addr().String())
	require.ErrorContains(t, err, "no valid Peer")
}
