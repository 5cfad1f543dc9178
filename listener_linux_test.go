package tcpmd5_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

func TestLiveKeys(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()
	peer := "127.0.20.1"
	withA := dialer(peer, key(t, "127.0.0.1", secretA))
	withB := dialer(peer, key(t, "127.0.0.1", secretB))

	dropDial(t, withA, "tcp", addr, netstat.MD5Unexpected) // no key yet: the kernel drops our signed SYN

	require.NoError(t, ln.SetKey(key(t, peer, secretA)))
	requireEcho(t, withA, addr)
	established, err := withA.Dial("tcp", addr)
	require.NoError(t, err)
	defer established.Close()
	ping(t, established)

	// Replacing the secret: new handshakes need the new one.
	require.NoError(t, ln.SetKey(key(t, peer, secretB)))
	requireEcho(t, withB, addr)
	dropDial(t, withA, "tcp", addr, netstat.MD5Failure)
	require.Len(t, ln.Keys(), 1)
	assert.Equal(t, secretB, string(ln.Keys()[0].Secret))

	// Removing it: signed SYNs are dropped again, unsigned ones refused at Accept.
	require.NoError(t, ln.RemoveKey(tcpmd5.Key{Peer: key(t, peer, secretA).Peer}))
	assert.Empty(t, ln.Keys())
	dropDial(t, withB, "tcp", addr, netstat.MD5Unexpected)
	requireResetByPolicy(t, ln, dialer(peer), addr)

	// The connection made with the first secret still works: it kept its copy.
	ping(t, established)

	require.NoError(t, ln.RemoveKey(key(t, peer, secretA)), "removing an absent key is not an error")
	require.Error(t, ln.RemoveKey(tcpmd5.Key{}), "a key without a peer names nothing")
}

func TestKeysReturnsCopies(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{
		key(t, "127.0.21.2", secretA),
		key(t, "::ffff:127.0.21.1", secretA), // v4-mapped input is kept as IPv4
		key(t, "127.0.21.0/24", secretB),
	}}, "tcp", ":0") // dual-stack where the host has IPv6
	keys := ln.Keys()
	require.Len(t, keys, 3)
	assert.Equal(t, "127.0.21.0/24", keys[0].Peer.String())
	assert.Equal(t, "127.0.21.1/32", keys[1].Peer.String())
	assert.Equal(t, "127.0.21.2/32", keys[2].Peer.String())
	keys[0].Secret[0] = 'X'
	assert.Equal(t, secretB, string(ln.Keys()[0].Secret), "Keys must hand out copies")
}

func TestAllowUnsigned(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	keys := []tcpmd5.Key{key(t, "127.0.22.1", secretA)}

	t.Run("listener refuses by default", func(t *testing.T) {
		t.Parallel()
		ln := listen(t, &tcpmd5.ListenConfig{Keys: keys}, "tcp4", "127.0.0.1:0")
		accepted := make(chan net.Conn, 2)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					close(accepted)
					return
				}
				accepted <- c
			}
		}()
		requireResetByPolicy(t, ln, dialer("127.0.22.2"), ln.Addr().String())
		signed, err := dialer("127.0.22.1", key(t, "127.0.0.1", secretA)).Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer signed.Close()
		c := <-accepted
		defer c.Close()
		assert.Equal(t, signed.LocalAddr().String(), c.RemoteAddr().String(), "Accept must return only the signed peer")
		assert.IsType(t, &net.TCPConn{}, c)
	})
	t.Run("listener hands unsigned peers over when allowed", func(t *testing.T) {
		t.Parallel()
		testenv.Netns(t)
		ln := listen(t, &tcpmd5.ListenConfig{Keys: keys, AllowUnsigned: true}, "tcp4", "127.0.0.1:0")
		serveEcho(t, ln)
		requireEcho(t, dialer("127.0.22.3"), ln.Addr().String())
		assert.Zero(t, ln.RefusedUnsigned())
		// Covered peers still need the signature.
		dropDial(t, dialer("127.0.22.1"), "tcp", ln.Addr().String(), netstat.MD5NotFound)
	})
	t.Run("dialer refuses destinations without a key", func(t *testing.T) {
		t.Parallel()
		ln := listen(t, &tcpmd5.ListenConfig{AllowUnsigned: true}, "tcp4", "127.0.0.1:0")
		serveEcho(t, ln)
		c, err := dialer("127.0.22.4", key(t, "127.0.99.0/24", secretA)).Dial("tcp", ln.Addr().String())
		require.ErrorIs(t, err, tcpmd5.ErrNoKey)
		require.Nil(t, c)
		assert.Contains(t, err.Error(), "127.0.0.1")
		assert.Contains(t, err.Error(), "AllowUnsigned")
		var oe *net.OpError
		require.ErrorAs(t, err, &oe)
		assert.Equal(t, "dial", oe.Op)
	})
	t.Run("dialer dials unsigned when allowed", func(t *testing.T) {
		t.Parallel()
		ln := listen(t, &tcpmd5.ListenConfig{AllowUnsigned: true}, "tcp4", "127.0.0.1:0")
		serveEcho(t, ln)
		d := dialer("127.0.22.5", key(t, "127.0.99.0/24", secretA))
		d.AllowUnsigned = true
		requireEcho(t, d, ln.Addr().String())
	})
}

func TestCallerControlRunsFirst(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	errMine := errors.New("fake hook failure")

	t.Run("listener", func(t *testing.T) {
		t.Parallel()
		var calls []string
		lc := &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.23.1", secretA)}}
		lc.Control = func(network, address string, c syscall.RawConn) error {
			calls = append(calls, network+" "+address)
			return nil
		}
		ln := listen(t, lc, "tcp4", "127.0.0.1:0")
		serveEcho(t, ln)
		assert.Equal(t, []string{"tcp4 127.0.0.1:0"}, calls)
		requireEcho(t, dialer("127.0.23.1", key(t, "127.0.0.1", secretA)), ln.Addr().String())

		lc.Control = func(string, string, syscall.RawConn) error { return errMine }
		_, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		require.ErrorIs(t, err, errMine)
	})
	t.Run("dialer Control and ControlContext", func(t *testing.T) {
		t.Parallel()
		ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.23.2", secretA)}}, "tcp4", "127.0.0.1:0")
		serveEcho(t, ln)
		d := dialer("127.0.23.2", key(t, "127.0.0.1", secretA))
		var got []string
		d.Control = func(network, address string, c syscall.RawConn) error {
			got = append(got, "control "+address)
			return nil
		}
		requireEcho(t, d, ln.Addr().String())
		d.ControlContext = func(ctx context.Context, network, address string, c syscall.RawConn) error {
			got = append(got, "context "+address)
			return nil
		}
		requireEcho(t, d, ln.Addr().String())
		addr := ln.Addr().String()
		assert.Equal(t, []string{"control " + addr, "context " + addr}, got, "ControlContext wins over Control, as in net.Dialer")

		d.ControlContext = func(context.Context, string, string, syscall.RawConn) error { return errMine }
		_, err := d.Dial("tcp", ln.Addr().String())
		require.ErrorIs(t, err, errMine)
	})
}

// TestConcurrentKeyChanges changes keys of other peers while signed dials
// and Accept run: every dial must connect, and -race must stay quiet.
func TestConcurrentKeyChanges(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.24.0/24", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	var churn sync.WaitGroup
	for w := range 4 {
		churn.Add(1)
		go func() {
			defer churn.Done()
			for i := 0; ctx.Err() == nil; i++ {
				k := key(t, fmt.Sprintf("127.0.25.%d", (w*50+i%50)%250+1), secretB)
				assert.NoError(t, ln.SetKey(k))
				_ = ln.Keys()
				assert.NoError(t, ln.RemoveKey(k))
			}
		}()
	}
	var dials sync.WaitGroup
	for i := range 50 {
		dials.Add(1)
		go func() {
			defer dials.Done()
			d := dialer(fmt.Sprintf("127.0.24.%d", i+1), key(t, "127.0.0.1", secretA))
			d.Timeout = 10 * time.Second
			c, err := d.Dial("tcp", addr)
			if !assert.NoError(t, err) {
				return
			}
			defer c.Close()
			_, err = io.WriteString(c, "ping")
			assert.NoError(t, err)
			buf := make([]byte, 4)
			_, err = io.ReadFull(c, buf)
			assert.NoError(t, err)
		}()
	}
	dials.Wait()
	cancel()
	churn.Wait()
	require.Len(t, ln.Keys(), 1)
}

// TestListenerKeyRotation changes a live listener's keys while sessions are
// up: the established sessions keep working with the key of their
// handshake, and every new handshake uses the keys installed at its time.
func TestListenerKeyRotation(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.4.1.0/24", secretA)}}, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()
	withA, withB := key(t, "127.0.0.1", secretA), key(t, "127.0.0.1", secretB)

	dialUp := func(src string, k tcpmd5.Key) net.Conn {
		t.Helper()
		c, err := dialer(src, k).Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		ping(t, c)
		return c
	}
	refused := func(src string, k tcpmd5.Key, counter string) {
		t.Helper()
		dropDial(t, dialer(src, k), "tcp", addr, counter)
	}

	oldA := dialUp("127.4.1.1", withA)

	// A new secret for the whole range: the old session goes on, new
	// handshakes need the new secret.
	require.NoError(t, ln.SetKey(key(t, "127.4.1.0/24", secretB)))
	ping(t, oldA)
	refused("127.4.1.2", withA, netstat.MD5Failure)
	newB := dialUp("127.4.1.2", withB)

	// A more specific key wins for its host only.
	require.NoError(t, ln.SetKey(key(t, "127.4.1.3", secretA)))
	dialUp("127.4.1.3", withA)
	refused("127.4.1.3", withB, netstat.MD5Failure)
	dialUp("127.4.1.4", withB)

	// Removing the range: its sessions go on; its peers can no longer
	// connect, signed (the kernel drops the SYN) or unsigned (Accept resets
	// the connection and counts it).
	require.NoError(t, ln.RemoveKey(tcpmd5.Key{Peer: netip.MustParsePrefix("127.4.1.0/24")}))
	assert.Equal(t, []tcpmd5.Key{key(t, "127.4.1.3", secretA)}, ln.Keys())
	ping(t, oldA)
	ping(t, newB)
	refused("127.4.1.5", withB, netstat.MD5Unexpected)
	refusedBefore := ln.RefusedUnsigned()
	// The kernel completes the unsigned handshake; Accept then resets the
	// connection, which the dialer sees at connect or at its first read.
	c, err := dialer("127.4.1.5").Dial("tcp", addr)
	if err == nil {
		defer c.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
		require.Error(t, err, "the listener handed over a connection no key covers")
	}
	var ne net.Error
	assert.False(t, errors.As(err, &ne) && ne.Timeout(), "want a reset or EOF, got %v", err)
	assert.Equal(t, refusedBefore+1, ln.RefusedUnsigned())
	ping(t, oldA)
}
