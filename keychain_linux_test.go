package tcpmd5_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// stream writes numbered chunks to c and reads their echo, checking every
// byte, until stop is closed; it returns the bytes that came back, the
// longest wait for an echo, and the first error.
func stream(c net.Conn, stop <-chan struct{}) (n int64, stall time.Duration, err error) {
	chunk := make([]byte, 512)
	back := make([]byte, len(chunk))
	for i := 0; ; i++ {
		select {
		case <-stop:
			return n, stall, nil
		default:
		}
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		start := time.Now()
		if err := c.SetDeadline(start.Add(mustConnect)); err != nil {
			return n, stall, err
		}
		if _, err := c.Write(chunk); err != nil {
			return n, stall, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return n, stall, err
		}
		if !bytes.Equal(chunk, back) {
			return n, stall, fmt.Errorf("chunk %d came back changed", i)
		}
		n += int64(len(back))
		stall = max(stall, time.Since(start))
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKeyChainMD5Roll, in a network namespace per case: a listener and a
// dialer, each with a chain of its own, hold a session with data flowing;
// each chain takes a new secret from a moment on, the dialer's skew later.
// The session survives with every byte echoed; while the ends disagree
// their segments are dropped (TCPMD5Failure moves); afterwards a dial
// with the old secret is dropped and one through the chain connects. The
// longest stall is logged: what the switch costs.
func TestKeyChainMD5Roll(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	for _, skew := range []time.Duration{0, 2 * time.Second, 10 * time.Second} {
		t.Run(fmt.Sprintf("skew %v", skew), func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			server, client := tcpmd5.NewKeyChain(), tcpmd5.NewKeyChain()
			toClient, toServer := key(t, "127.0.0.2", secretA), key(t, "127.0.0.1", secretA)
			require.NoError(t, server.SetKey(toClient, time.Time{}))
			require.NoError(t, client.SetKey(toServer, time.Time{}))
			ln := listen(t, &tcpmd5.ListenConfig{KeyChain: server}, "tcp4", "127.0.0.1:0")
			serveEcho(t, ln)
			d := dialer("127.0.0.2")
			d.KeyChain = client
			c, err := d.Dial("tcp4", ln.Addr().String())
			require.NoError(t, err)
			defer c.Close()
			require.Eventually(t, func() bool { return len(server.Sessions()) == 1 }, mustConnect, 10*time.Millisecond)

			stop := make(chan struct{})
			type result struct {
				n     int64
				stall time.Duration
				err   error
			}
			done := make(chan result, 1)
			go func() { n, stall, err := stream(c, stop); done <- result{n, stall, err} }()

			before := counters(t)
			at := time.Now().Add(time.Second)
			toClient.Secret, toServer.Secret = []byte(secretB), []byte(secretB)
			require.NoError(t, server.SetKey(toClient, at))
			require.NoError(t, client.SetKey(toServer, at.Add(skew)))
			time.Sleep(time.Until(at.Add(skew)) + 3*time.Second)
			close(stop)
			r := <-done
			require.NoError(t, r.err, "the session did not survive the switch")
			assert.Positive(t, r.n)
			failed := before.Delta(counters(t), netstat.MD5Failure)[netstat.MD5Failure]
			if skew > 0 {
				assert.Positive(t, failed, "the ends disagreed for %v, yet no segment failed verification", skew)
			}
			t.Logf("skew %v: %d bytes echoed, none lost; longest stall %v; %d segments failed verification", skew, r.n, r.stall.Round(time.Millisecond), failed)

			old := dialer("127.0.0.2", key(t, "127.0.0.1", secretA))
			dropDial(t, old, "tcp4", ln.Addr().String(), netstat.MD5Failure)
			requireEcho(t, d, ln.Addr().String())
			for _, s := range server.Sessions() {
				assert.Equal(t, "127.0.0.2", s.Remote.Addr().String())
				require.Len(t, s.Keys, 1)
				assert.Nil(t, s.Keys[0].Secret, "Sessions shows no secret")
				assert.NoError(t, s.Err)
			}
		})
	}
}

// TestKeyChainListenerKeys: a listener's sockets take the chain's keys, a
// removed one is refused afterwards, and keys that overlap the chain's are
// an error at Listen, as at a dial.
func TestKeyChainListenerKeys(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	chain := tcpmd5.NewKeyChain()
	require.NoError(t, chain.SetKey(key(t, "127.0.0.2", secretA), time.Time{}))
	_, err := (&tcpmd5.ListenConfig{KeyChain: chain, Keys: []tcpmd5.Key{key(t, "127.0.0.0/24", secretB)}}).Listen(t.Context(), "tcp4", "127.0.0.1:0")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "overlaps the chain's")

	ln := listen(t, &tcpmd5.ListenConfig{KeyChain: chain, Keys: []tcpmd5.Key{key(t, "127.0.0.3", secretB)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	assert.Len(t, ln.Keys(), 2)
	requireEcho(t, dialer("127.0.0.2", key(t, "127.0.0.1", secretA)), ln.Addr().String())
	requireEcho(t, dialer("127.0.0.3", key(t, "127.0.0.1", secretB)), ln.Addr().String())

	require.NoError(t, chain.SetKey(key(t, "127.0.0.4", secretB), time.Time{}))
	requireEcho(t, dialer("127.0.0.4", key(t, "127.0.0.1", secretB)), ln.Addr().String())
	assert.ErrorContains(t, ln.SetKey(key(t, "127.0.0.4", secretA)), "overlaps the chain's", "the chain's peer changes only through the chain")
	assert.ErrorContains(t, ln.RemoveKey(key(t, "127.0.0.4", secretA)), "overlaps the chain's")
	require.NoError(t, ln.SetKey(key(t, "127.0.0.3", secretA)), "the listener's own peer")
	require.NoError(t, chain.RemoveKey(tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.0.2/32")}, time.Time{}))
	requireResetByPolicy(t, ln, dialer("127.0.0.2"), ln.Addr().String())

	d := dialer("127.0.0.2", key(t, "127.0.0.1", secretA))
	d.KeyChain = tcpmd5.NewKeyChain()
	require.NoError(t, d.KeyChain.SetKey(key(t, "127.0.0.0/8", secretA), time.Time{}))
	_, err = d.Dial("tcp4", ln.Addr().String())
	assert.ErrorContains(t, err, "both the Dialer's keys and its KeyChain cover")
}

// TestKeyChainRaces: chain edits race with accepts, dials and closes on
// one listener and one dialer sharing the chain; every dial is signed and
// echoed, and the race detector finds nothing.
func TestKeyChainRaces(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	chain := tcpmd5.NewKeyChain()
	require.NoError(t, chain.SetKey(key(t, "127.0.0.0/24", secretA), time.Time{}))
	ln := listen(t, &tcpmd5.ListenConfig{KeyChain: chain}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	d := dialer("127.0.0.2")
	d.KeyChain = chain
	before := counters(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var dials atomic.Int64
	errs := make(chan error, 8)
	enter := testenv.Here(t)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := enter(); err != nil {
				errs <- err
				return
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := d.Dial("tcp4", ln.Addr().String())
				if err == nil {
					_, err = c.Write([]byte("Ping"))
					if err == nil {
						_, err = io.ReadFull(c, make([]byte, 4))
					}
					c.Close()
				}
				if err != nil {
					errs <- err
					return
				}
				dials.Add(1)
				_ = chain.Sessions()
			}
		}()
	}
	edits := 0
	for i, end := 0, time.Now().Add(10*time.Second); i < 200 || dials.Load() < 100 && time.Now().Before(end); i++ {
		edits += 2
		other := tcpmd5.Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 32), Secret: []byte(secretB)}
		require.NoError(t, chain.SetKey(other, time.Time{}))
		require.NoError(t, chain.SetKey(key(t, "127.0.0.0/24", secretA), time.Now().Add(-time.Duration(i)*time.Second)))
		if i%2 == 1 {
			require.NoError(t, chain.RemoveKey(other, time.Time{}))
			edits++
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		after := counters(t)
		moved := map[string]uint64{}
		for k, v := range after {
			if v != before[k] {
				moved[k] = v - before[k]
			}
		}
		t.Fatalf("a dial failed while the chain changed: %v; counters moved %v; %d sockets listen", err, moved, listeningSockets(t, port(ln)))
	default:
	}
	assert.Positive(t, dials.Load())
	t.Logf("%d dials while the chain changed %d times", dials.Load(), edits)
}

// TestKeyChainSwitchesEveryGroupSocket: a listener holding 10,000 chain
// keys spreads them over a group of sockets; every key takes a new secret
// at one moment, and afterwards peers whose keys sit on different sockets
// connect with the new secret and are dropped with the old one.
func TestKeyChainSwitchesEveryGroupSocket(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	const peers = 10000
	chain := tcpmd5.NewKeyChain()
	start := time.Now()
	for i := range peers {
		require.NoError(t, chain.SetKey(tcpmd5.Key{Peer: hostPrefix(i), Secret: []byte(secretA)}, time.Time{}))
	}
	// Scheduling the new keys costs about what setting these did: the
	// switch is set far enough ahead for this machine.
	lead := max(2*time.Second, 3*time.Since(start))
	ln := listen(t, &tcpmd5.ListenConfig{KeyChain: chain}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	sockets := listeningSockets(t, port(ln))
	require.Greater(t, sockets, 1, "10,000 keys on one socket")
	at := time.Now().Add(lead)
	for i := range peers {
		require.NoError(t, chain.SetKey(tcpmd5.Key{Peer: hostPrefix(i), Secret: []byte(secretB)}, at))
	}
	require.True(t, time.Now().Before(at), "scheduling 10,000 keys took past the switch")
	time.Sleep(time.Until(at) + 500*time.Millisecond)
	for _, i := range []int{0, 1, peers / 3, peers / 2, peers - 1} {
		src := hostPrefix(i).Addr().String()
		requireEcho(t, dialer(src, key(t, "127.0.0.1", secretB)), ln.Addr().String())
		dropDial(t, dialer(src, key(t, "127.0.0.1", secretA)), "tcp4", ln.Addr().String(), netstat.MD5Failure)
	}
	t.Logf("%d keys over %d sockets switched at one moment", peers, sockets)
}
