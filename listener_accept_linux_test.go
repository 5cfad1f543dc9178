package tcpmd5_test

import (
	"errors"
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
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

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

// acceptAllFilter is a classic BPF socket filter of n instructions that
// lets every segment through: what a caller's Control might attach, whose
// charge to the socket's option memory grows with n.
func acceptAllFilter(t testing.TB, n int) []unix.SockFilter {
	t.Helper()
	prog := make([]bpf.Instruction, 0, n)
	for len(prog) < n-1 {
		prog = append(prog, bpf.LoadConstant{Dst: bpf.RegX, Val: uint32(len(prog))})
	}
	raw, err := bpf.Assemble(append(prog, bpf.RetConstant{Val: 0xffffffff}))
	require.NoError(t, err)
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out
}

// setFilter attaches a filter of n instructions to the socket behind c, or
// detaches it for n = 0.
func setFilter(t testing.TB, c syscall.RawConn, n int) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if n == 0 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DETACH_FILTER, 0)
			return
		}
		f := acceptAllFilter(t, n)
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]})
	})
	if err != nil {
		return err
	}
	return serr
}

// TestAcceptIgnoresSocketFilters: a socket filter the caller attaches, then
// replaces or detaches through SyscallConn while a connection waits,
// changes nothing of what Accept hands over. The filter's charge to option
// memory is no proof of a key.
func TestAcceptIgnoresSocketFilters(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	const covered, uncovered = "127.0.26.1", "127.0.26.2"
	tests := []struct {
		name        string
		before      int // instructions of the filter at Listen
		after       int // ... once the connection waits; 0 detaches it
		signed      bool
		handedOver  bool
		allowUnsign bool
	}{
		{name: "unsigned, 64 instructions then 1", before: 64, after: 1},
		{name: "unsigned, 64 instructions then none", before: 64, after: 0},
		{name: "unsigned, 1 instruction then 64", before: 1, after: 64},
		{name: "signed, 1 instruction then 64", before: 1, after: 64, signed: true, handedOver: true},
		{name: "signed, 64 instructions then none", before: 64, after: 0, signed: true, handedOver: true},
		{name: "unsigned and allowed, 64 then 1", before: 64, after: 1, handedOver: true, allowUnsign: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, covered, secretA)}, AllowUnsigned: tt.allowUnsign}
			lc.Control = func(_, _ string, c syscall.RawConn) error { return setFilter(t, c, tt.before) }
			ln := listen(t, &lc, "tcp4", "127.0.0.1:0")
			d := dialer(uncovered)
			d.AllowUnsigned = true
			if tt.signed {
				d = dialer(covered, key(t, "127.0.0.1", secretA))
			}
			change := func(ln *tcpmd5.Listener) error {
				rc, err := ln.SyscallConn()
				if err != nil {
					return err
				}
				return setFilter(t, rc, tt.after)
			}
			acceptAfter(t, ln, d, change, tt.handedOver)
		})
	}
}

// TestAcceptDualStackStickyOptions: IPv6 sticky options (IPV6_DSTOPTS) on a
// dual-stack listener, which the kernel charges to its IPv6 children and
// not to its IPv4 ones, change nothing of what Accept hands over: signed
// peers of both families are served, an unsigned one is refused.
func TestAcceptDualStackStickyOptions(t *testing.T) {
	requireMD5(t)
	requireIPv6(t)
	t.Parallel()
	testenv.Netns(t)
	dstopts := []byte{0, 0, 1, 4, 0, 0, 0, 0} // next header, length 0 (8 bytes), a PadN of 4
	lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.26.20", secretA), key(t, "::1", secretA)}}
	lc.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string(dstopts))
		}); err != nil {
			return err
		}
		return serr
	}
	ln := listen(t, &lc, "tcp", "[::]:0")
	port := itoa(ln.Addr().(*net.TCPAddr).Port)
	serveEcho(t, ln)
	requireEcho(t, dialer("127.0.26.20", key(t, "127.0.0.1", secretA)), "127.0.0.1:"+port)
	requireEcho(t, dialer("::1", key(t, "::1", secretA)), "[::1]:"+port)

	unsigned := dialer("127.0.26.21")
	unsigned.AllowUnsigned = true
	c, err := unsigned.Dial("tcp", "127.0.0.1:"+port) // no key covers it: the kernel completes the handshake
	if err == nil {                                   // unless Accept's reset was quicker than connect(2)
		defer c.Close()
		require.NoError(t, c.SetReadDeadline(time.Now().Add(mustConnect)))
		_, err = c.Read(make([]byte, 1))
	}
	require.ErrorIs(t, err, syscall.ECONNRESET, "Accept must refuse the unsigned peer")
	assert.EqualValues(t, 1, ln.RefusedUnsigned())
}

// TestAcceptOutOfDescriptors: a process that is out of file descriptors
// when Accept first judges a signed connection goes on serving signed
// peers, then and afterwards. Accept opens no descriptor of its own to
// judge. It runs in a child of the test binary, whose descriptor limit it
// lowers.
func TestAcceptOutOfDescriptors(t *testing.T) {
	requireMD5(t)
	testenv.RequireRoot(t)
	if !tcpmd5.InChild(t, "TCPMD5_FD_CHILD", "handed over with no descriptor free") {
		return
	}
	testenv.Netns(t)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 256, Max: 256}))
	ln := listen(t, &tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, "127.0.26.30/31", secretA)}}, "tcp4", "127.0.0.1:0")
	d := dialer("127.0.26.30", key(t, "127.0.0.1", secretA))
	client, err := d.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()

	// Take every descriptor. If the connection still waits for accept(2),
	// give back one at a time until it is taken: then none is free.
	fill, err := testenv.FillDescriptors()
	require.NoError(t, err)
	require.NotEmpty(t, fill)
	require.NoError(t, ln.SetDeadline(time.Now().Add(mustConnect)))
	c, err := ln.Accept()
	for errors.Is(err, unix.EMFILE) && len(fill) > 0 {
		fill[len(fill)-1].Close()
		fill = fill[:len(fill)-1]
		c, err = ln.Accept()
	}
	require.NoError(t, err)
	t.Log("handed over with no descriptor free")
	for _, f := range fill {
		f.Close()
	}
	defer c.Close()
	go func() { _, _ = io.Copy(c, c) }()
	ping(t, client)
	assert.Zero(t, ln.RefusedUnsigned())

	// And so is the next signed peer.
	serveEcho(t, ln)
	requireEcho(t, dialer("127.0.26.31", key(t, "127.0.0.1", secretA)), ln.Addr().String())
	assert.Zero(t, ln.RefusedUnsigned())
}

// TestOnRefuse: Accept tells OnRefuse of each connection it refuses, with
// the peer, the address it reached and the reason, and counts it: an
// unsigned peer no key covers (no-key), and, on a listener that allows
// unsigned peers, one whose unsigned handshake completed before a key for
// it went in (key-added). Signed and allowed peers are not reported.
func TestOnRefuse(t *testing.T) {
	requireMD5(t)
	testenv.Netns(t)
	refusals := make(chan tcpmd5.Refusal, 8)
	lc := &tcpmd5.ListenConfig{
		Keys:     []tcpmd5.Key{key(t, "127.0.72.1", secretA)},
		OnRefuse: func(r tcpmd5.Refusal) { refusals <- r },
	}
	ln := listen(t, lc, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	addr := ln.Addr().String()
	requireEcho(t, dialer("127.0.72.1", key(t, "127.0.0.1", secretA)), addr)
	unsigned := dialer("127.0.72.2")
	unsigned.AllowUnsigned = true
	requireResetByPolicy(t, ln, unsigned, addr)
	r := <-refusals
	assert.Equal(t, netip.MustParseAddr("127.0.72.2"), r.Remote.Addr())
	assert.Equal(t, addr, r.Local.String())
	assert.Equal(t, tcpmd5.RefusedNoKey, r.Reason)

	// AllowUnsigned: an unsigned peer waits in the queue, then a key for
	// it goes in before Accept takes it.
	lc = &tcpmd5.ListenConfig{AllowUnsigned: true, OnRefuse: func(r tcpmd5.Refusal) { refusals <- r }}
	ln = listen(t, lc, "tcp4", "127.0.0.1:0")
	addr = ln.Addr().String()
	c, err := unsigned.Dial("tcp4", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, ln.SetKey(key(t, "127.0.72.2", secretA)))
	serveEcho(t, ln)
	select {
	case r = <-refusals:
	case <-time.After(mustConnect):
		t.Fatal("OnRefuse was not told")
	}
	assert.Equal(t, tcpmd5.RefusedKeyAdded, r.Reason)
	assert.Equal(t, c.LocalAddr().String(), r.Remote.String())
	assert.EqualValues(t, 1, ln.RefusedUnsigned())
	select {
	case r = <-refusals:
		t.Fatalf("one refusal too many: %+v", r)
	default:
	}
}
