package tcpmd5_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
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

// requireResetByPolicy dials unsigned from d, which the kernel lets in, and
// requires the Listener to reset the connection and count it.
func requireResetByPolicy(t *testing.T, ln *tcpmd5.Listener, d *tcpmd5.Dialer, addr string) {
	t.Helper()
	before := ln.RefusedUnsigned()
	c, err := d.Dial("tcp", addr)
	if err == nil { // the reset may come before or after connect returns
		defer c.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
	}
	require.ErrorIs(t, err, syscall.ECONNRESET, "the Listener must reset an unsigned connection")
	require.Eventually(t, func() bool { return ln.RefusedUnsigned() == before+1 }, 5*time.Second, 10*time.Millisecond)
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

// TestAcceptOrderings forces each order of handshake, key change and
// Accept: a connection is handed over if and only if the kernel verified
// its handshake with a key, or it is unsigned from a peer that no key covers
// when Accept runs and AllowUnsigned is set. An unsigned handshake that
// completed before SetKey covered its peer waits in the accept queue
// unsigned: Accept must reset it, whatever kind of key arrived and on
// whichever socket of a group.
func TestAcceptOrderings(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	const peer = "127.0.25.9"
	group := make([]tcpmd5.Key, 300) // more than one socket holds: a group
	for i := range group {
		group[i] = key(t, fmt.Sprintf("127.32.%d.%d", 1+i/250, 1+i%250), secretA)
	}
	tests := []struct {
		name          string
		lc            tcpmd5.ListenConfig
		dial          tcpmd5.Key // the dialer's key; no Peer: unsigned
		change        func(ln *tcpmd5.Listener) error
		handedOver    bool
		stillSignedAs string // after the change, the connection's secret
	}{
		{
			name:   "unsigned, then a host key for the peer",
			lc:     tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.25.1", secretA)}},
			change: func(ln *tcpmd5.Listener) error { return ln.SetKey(key(t, peer, secretA)) },
		},
		{
			name:   "unsigned, then a prefix key",
			lc:     tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.25.1", secretA)}},
			change: func(ln *tcpmd5.Listener) error { return ln.SetKey(key(t, "127.0.25.0/24", secretA)) },
		},
		{
			name:   "unsigned, then a host key, on a group of sockets",
			lc:     tcpmd5.ListenConfig{Keys: group},
			change: func(ln *tcpmd5.Listener) error { return ln.SetKey(key(t, peer, secretA)) },
		},
		{
			name:   "unsigned and allowed, then a key covers the peer",
			lc:     tcpmd5.ListenConfig{AllowUnsigned: true},
			change: func(ln *tcpmd5.Listener) error { return ln.SetKey(key(t, peer, secretA)) },
		},
		{
			name:       "unsigned and allowed, no key covers the peer",
			lc:         tcpmd5.ListenConfig{AllowUnsigned: true, Keys: []tcpmd5.Key{key(t, "127.0.25.1", secretA)}},
			change:     func(ln *tcpmd5.Listener) error { return nil },
			handedOver: true,
		},
		{
			name:          "signed, then the key is removed",
			lc:            tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, peer, secretA)}},
			dial:          key(t, "127.0.0.1", secretA),
			change:        func(ln *tcpmd5.Listener) error { return ln.RemoveKey(key(t, peer, secretA)) },
			handedOver:    true,
			stillSignedAs: secretA,
		},
		{
			name:          "signed, then the secret changes",
			lc:            tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.25.0/24", secretA)}},
			dial:          key(t, "127.0.0.1", secretA),
			change:        func(ln *tcpmd5.Listener) error { return ln.SetKey(key(t, "127.0.25.0/24", secretB)) },
			handedOver:    true,
			stillSignedAs: secretA,
		},
		{
			name:          "signed on a group of sockets, then the group grows",
			lc:            tcpmd5.ListenConfig{Keys: append([]tcpmd5.Key{key(t, peer, secretA)}, group...)},
			dial:          key(t, "127.0.0.1", secretA),
			change:        func(ln *tcpmd5.Listener) error { return growGroup(ln, 1000) },
			handedOver:    true,
			stillSignedAs: secretA,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			ln := listen(t, &tt.lc, "tcp4", "127.0.0.1:0")
			d := dialer(peer)
			if tt.dial.Peer.IsValid() {
				d.Keys = []tcpmd5.Key{tt.dial}
			} else {
				d.AllowUnsigned = true
			}
			client, err := d.Dial("tcp", ln.Addr().String()) // the kernel completes the handshake; nobody accepts yet
			require.NoError(t, err)
			defer client.Close()
			require.NoError(t, tt.change(ln))

			require.NoError(t, ln.SetDeadline(time.Now().Add(time.Second)))
			c, err := ln.Accept()
			if !tt.handedOver {
				require.ErrorIs(t, err, os.ErrDeadlineExceeded, "Accept handed over an unsigned connection from a covered peer")
				assert.EqualValues(t, 1, ln.RefusedUnsigned())
				require.NoError(t, client.SetReadDeadline(time.Now().Add(mustConnect)))
				_, err = client.Read(make([]byte, 1))
				require.ErrorIs(t, err, syscall.ECONNRESET)
				return
			}
			require.NoError(t, err)
			defer c.Close()
			assert.Zero(t, ln.RefusedUnsigned())
			assert.Equal(t, client.LocalAddr().String(), c.RemoteAddr().String())
			go func() { _, _ = io.Copy(c, c) }()
			ping(t, client) // the connection works with the secret of its handshake
		})
	}
}

// growGroup adds n keys for peers of 127.33.0.0/16 to ln, which grows its
// group of sockets to hold them.
func growGroup(ln *tcpmd5.Listener, n int) error {
	for i := range n {
		k := tcpmd5.Key{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{127, 33, byte(i >> 8), byte(i)}), 32), Secret: []byte(secretB)}
		if err := ln.SetKey(k); err != nil {
			return err
		}
	}
	return nil
}

// TestAcceptErrors: Accept fails as net.TCPListener's does, the same way
// whether the listener has one socket or a group: a *net.OpError for
// "accept" on the network it was made with, wrapping os.ErrDeadlineExceeded
// after the deadline (even one set while Accept waits) and net.ErrClosed
// after Close.
func TestAcceptErrors(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.25.200", secretA)}}, "tcp4", "127.0.0.1:0")
	requireAcceptError := func(want error) {
		t.Helper()
		_, err := ln.Accept()
		require.ErrorIs(t, err, want)
		var oe *net.OpError
		require.ErrorAs(t, err, &oe)
		assert.Equal(t, "accept", oe.Op)
		assert.Equal(t, "tcp4", oe.Net)
		assert.Equal(t, ln.Addr().String(), oe.Addr.String())
	}
	for _, grown := range []bool{false, true} {
		if grown {
			require.NoError(t, growGroup(ln, 300))
		}
		require.NoError(t, ln.SetDeadline(time.Now().Add(-time.Second)))
		requireAcceptError(os.ErrDeadlineExceeded)
		require.NoError(t, ln.SetDeadline(time.Time{}))
		go func() {
			time.Sleep(50 * time.Millisecond)
			_ = ln.SetDeadline(time.Now()) // wakes the Accept below
		}()
		requireAcceptError(os.ErrDeadlineExceeded)
		require.NoError(t, ln.SetDeadline(time.Time{}))
	}
	require.NoError(t, ln.Close())
	requireAcceptError(net.ErrClosed)
}
