package tcpmd5_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

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
			acceptAfter(t, ln, d, tt.change, tt.handedOver)
		})
	}
}

// acceptAfter dials ln with d, which the kernel completes while nobody
// accepts yet, then changes the listener's keys with change and requires
// Accept to hand the connection over, working with the key of its
// handshake, or to refuse it with a reset.
func acceptAfter(t *testing.T, ln *tcpmd5.Listener, d *tcpmd5.Dialer, change func(*tcpmd5.Listener) error, handedOver bool) {
	t.Helper()
	client, err := d.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	require.NoError(t, change(ln))

	require.NoError(t, ln.SetDeadline(time.Now().Add(time.Second)))
	c, err := ln.Accept()
	if !handedOver {
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
	ping(t, client) // the connection works with the key of its handshake
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
