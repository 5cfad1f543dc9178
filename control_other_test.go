//go:build !linux || tcpmd5stub

package tcpmd5_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
)

// TestStub checks the promise for systems other than Linux: the API works
// without keys and every use of a key fails with ErrMD5Unsupported.
func TestStub(t *testing.T) {
	assert.False(t, tcpmd5.Supported())
	_, err := drops.Watch(drops.Filter{})
	require.ErrorIs(t, err, drops.ErrUnsupported)
	assert.False(t, tcpmd5.AOSupported())
	ao, err := tcpmd5.ParseAOKey("127.0.0.1", "send=1 recv=2 alg=hmac(sha1)", "fake-secret-stub")
	require.NoError(t, err)
	_, err = (&tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{ao}}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.ErrorIs(t, err, tcpmd5.ErrAOUnsupported)
	_, err = (&tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{ao}}).Dial("tcp", "127.0.0.1:1")
	require.ErrorIs(t, err, tcpmd5.ErrAOUnsupported)
	k, err := tcpmd5.ParseKey("127.0.0.1", "fake-secret-stub")
	require.NoError(t, err)

	_, err = tcpmd5.Listen("tcp", "127.0.0.1:0", k)
	require.ErrorIs(t, err, tcpmd5.ErrMD5Unsupported)
	assert.NotContains(t, err.Error(), "fake-secret-stub")

	lc := &tcpmd5.ListenConfig{AllowUnsigned: true}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err, "a listener without keys works everywhere")
	defer ln.Close()
	require.ErrorIs(t, ln.SetKey(k), tcpmd5.ErrMD5Unsupported)
	assert.Empty(t, ln.Keys())

	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	var plain tcpmd5.Dialer
	c, err := plain.Dial("tcp", ln.Addr().String())
	require.NoError(t, err, "a dialer without keys is net.Dialer")
	c.Close()

	_, err = (&tcpmd5.Dialer{Keys: []tcpmd5.Key{k}}).Dial("tcp", ln.Addr().String())
	require.ErrorIs(t, err, tcpmd5.ErrMD5Unsupported)

	tl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer tl.Close()
	require.ErrorIs(t, tcpmd5.SetKeys(tl.(*net.TCPListener), k), tcpmd5.ErrMD5Unsupported)
	require.NoError(t, tcpmd5.SetKeys(tl.(*net.TCPListener)), "no keys is nothing to do")

	f, err := tl.(*net.TCPListener).File()
	require.NoError(t, err)
	defer f.Close()
	_, err = (&tcpmd5.ListenConfig{Keys: []tcpmd5.Key{k}}).FileListener(f)
	require.ErrorIs(t, err, tcpmd5.ErrMD5Unsupported)
	inherited, err := (&tcpmd5.ListenConfig{AllowUnsigned: true}).FileListener(f)
	require.NoError(t, err, "an inherited listener without keys works everywhere")
	require.NoError(t, inherited.Close())

	var hooked net.ListenConfig
	hooked.Control = tcpmd5.Control(k)
	_, err = hooked.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.ErrorIs(t, err, tcpmd5.ErrMD5Unsupported)
	hooked.Control = tcpmd5.AOControl(ao)
	_, err = hooked.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.ErrorIs(t, err, tcpmd5.ErrAOUnsupported)
}
