package tcpmd5_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// TestBadInputKernel covers the invalid input only the kernel can judge:
// keys a socket cannot take and sockets that cannot take keys. Each gets
// its error, without a panic or the secret, and leaves nothing installed.
func TestBadInputKernel(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	lo, err := net.InterfaceByName("lo")
	require.NoError(t, err)
	secret := []byte(badSecret)
	host := netip.MustParsePrefix("127.4.2.1/32")

	tcp4 := listen(t, &tcpmd5.ListenConfig{}, "tcp4", "127.0.0.1:0")
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { udp.Close() })
	sock := filepath.Join(t.TempDir(), "s")
	ux, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { ux.Close(); os.Remove(sock) })
	closed, err := tcpmd5.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, closed.Close())

	tests := []struct {
		name string
		call func() error
		is   error // errors.Is target, or nil
		want string
	}{
		{"Ifindex of a device that is not a VRF", func() error {
			return tcp4.SetKey(tcpmd5.Key{Peer: host, Secret: secret, Ifindex: lo.Index})
		}, syscall.EINVAL, "is not a VRF (L3 master) device"},
		{"Ifindex of no device", func() error {
			return tcp4.SetKey(tcpmd5.Key{Peer: host, Secret: secret, Ifindex: 1 << 30})
		}, syscall.EINVAL, "there is no interface with index 1073741824 in this network namespace"},
		{"zone of lo through ParseKey", func() error {
			_, err := tcpmd5.ParseKey("127.4.2.1%lo", badSecret)
			return err
		}, nil, "interface lo is not a VRF device"},
		{"interface lo through SetKey", func() error {
			return tcp4.SetKey(tcpmd5.Key{Peer: host, Secret: secret, Ifindex: lo.Index})
		}, syscall.EINVAL, "key for 127.4.2.1%"},
		{"IPv6 peer on an IPv4 listener", func() error {
			return tcp4.SetKey(tcpmd5.Key{Peer: netip.MustParsePrefix("2001:db8::/32"), Secret: secret})
		}, nil, "an IPv6 peer cannot be keyed on an IPv4 socket"},
		{"tcp6 dial to an IPv4 address", func() error {
			d := tcpmd5.Dialer{Keys: []tcpmd5.Key{{Peer: netip.MustParsePrefix("::/0"), Secret: secret}}}
			_, err := d.Dial("tcp6", "127.0.0.1:9")
			return err
		}, nil, "no suitable address"},
		{"SetKeys on nil", func() error {
			return tcpmd5.SetKeys(nil, tcpmd5.Key{Peer: host, Secret: secret})
		}, nil, "SetKeys needs a socket, got nil"},
		{"SetKeys on a UDP socket", func() error {
			return tcpmd5.SetKeys(udp.(*net.UDPConn), tcpmd5.Key{Peer: host, Secret: secret})
		}, nil, "not TCP"},
		{"SetKeys on a unix socket", func() error {
			return tcpmd5.SetKeys(ux.(*net.UnixListener), tcpmd5.Key{Peer: host, Secret: secret})
		}, nil, "not IPv4 or IPv6"},
		{"SetKey on a closed Listener", func() error {
			return closed.SetKey(tcpmd5.Key{Peer: host, Secret: secret})
		}, net.ErrClosed, "tcpmd5: "},
		{"RemoveKey on a closed Listener", func() error {
			lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{{Peer: host, Secret: secret}}}
			ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
			require.NoError(t, err)
			require.NoError(t, ln.Close())
			return ln.RemoveKey(tcpmd5.Key{Peer: host})
		}, net.ErrClosed, "tcpmd5: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { err = tt.call() })
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
			assert.NotErrorIs(t, err, tcpmd5.ErrMD5Unsupported, "the kernel supports MD5; this is the caller's mistake")
			requireNoSecret(t, err)
		})
	}
	assert.Empty(t, tcp4.Keys(), "a refused key was recorded")
	// Nothing was installed: an unsigned peer the bad keys named still connects.
	lc := &tcpmd5.ListenConfig{AllowUnsigned: true}
	ln := listen(t, lc, "tcp4", "127.0.0.1:0")
	serveEcho(t, ln)
	require.Error(t, ln.SetKey(tcpmd5.Key{Peer: host, Secret: secret, Ifindex: lo.Index}))
	requireEcho(t, dialer("127.4.2.1"), ln.Addr().String())
}

// TestSetKeysFailureKeepsEveryPeerKeyed: a SetKeys call the kernel refuses
// halfway leaves every peer that had a key with one. On a socket made
// elsewhere, .80 is keyed with v1; SetKeys(.80 with v2, .81 on an interface
// that does not exist) fails on the second key: .80 keeps a key, the new
// one, so an unsigned peer from .80 is dropped and v2 connects.
func TestSetKeysFailureKeepsEveryPeerKeyed(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	ln := plainListener(t, "127.0.0.1:0", nil)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	require.NoError(t, tcpmd5.SetKeys(ln, key(t, "127.0.28.80", secretA)))
	err := tcpmd5.SetKeys(ln, key(t, "127.0.28.80", secretB), tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.28.81/32"), Secret: []byte(secretB), Ifindex: 999})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no interface with index 999")
	assert.Contains(t, err.Error(), "the 1 keys before it are installed")

	unsigned := dialer("127.0.28.80")
	unsigned.AllowUnsigned = true
	dropDial(t, unsigned, "tcp", ln.Addr().String(), netstat.MD5NotFound)
	dropDial(t, dialer("127.0.28.80", key(t, "127.0.0.1", secretA)), "tcp", ln.Addr().String(), netstat.MD5Failure)
	requireEcho(t, dialer("127.0.28.80", key(t, "127.0.0.1", secretB)), ln.Addr().String())
}
