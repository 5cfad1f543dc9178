package tcpmd5

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	d := Dialer{AllowUnsigned: secret == nil}
	d.Timeout = 30 * time.Second
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	if secret != nil {
		d.Keys = []Key{{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: secret}}
	}
	c, err := d.Dial("tcp4", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
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
	l, err := (&ListenConfig{}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	k := Key{Peer: netip.MustParsePrefix("127.0.27.0/24"), Secret: fakeB}
	l.mu.Lock() // no accept now: both connections wait in the queue
	unsigned := dialFrom(t, "127.0.27.10", l.Addr().String(), nil)
	require.NoError(t, setKey(l.first.rc, l.first.family, k)) // what SetKey does, then
	signed := dialFrom(t, "127.0.27.11", l.Addr().String(), fakeB)
	l.first.keys.md5.set(k.bare())
	l.keys.md5.set(k.clone())
	require.NoError(t, l.drainMD5(l.first, []Key{k}))
	l.mu.Unlock()

	require.NoError(t, l.SetDeadline(time.Now().Add(10*time.Second)))
	c, err := l.Accept()
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, signed.LocalAddr().String(), c.RemoteAddr().String())
	echoes(t, signed, c)
	require.NoError(t, l.SetDeadline(time.Now().Add(time.Second)))
	_, err = l.Accept()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.EqualValues(t, 1, l.RefusedUnsigned())
	require.NoError(t, unsigned.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = unsigned.Read(make([]byte, 1))
	require.ErrorIs(t, err, syscall.ECONNRESET)
}
