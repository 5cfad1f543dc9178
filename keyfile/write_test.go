package keyfile_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/keyfile"
)

// TestWrite writes keys of every form the format has, secrets bare and in
// quotes, and reads them back the same; what the format cannot hold is
// refused with an error that names the key and not its secret.
func TestWrite(t *testing.T) {
	t.Parallel()
	md5 := func(peer, secret string) tcpmd5.Key {
		k, err := tcpmd5.ParseKey(peer, secret)
		require.NoError(t, err)
		return k
	}
	ao := func(peer, spec, secret string) tcpmd5.AOKey {
		k, err := tcpmd5.ParseAOKey(peer, spec, secret)
		require.NoError(t, err)
		return k
	}
	f := keyfile.File{
		Keys: []tcpmd5.Key{
			md5("192.0.2.1", secretA),
			md5("2001:db8::/64", "fake secret # with \"quotes\" and \\"),
			md5("198.51.100.0/24", "send=looks-like-a-parameter"),
			md5("192.0.2.9", "ao"),
		},
		AOKeys: []tcpmd5.AOKey{
			ao("192.0.2.2", "send=1 recv=2 alg=hmac(sha1)", secretB),
			ao("2001:db8:1::/48", "send=3 recv=4 alg=cmac(aes128) mac=16 exclude-options", "fake\tsecret-tab"),
		},
	}
	var b strings.Builder
	require.NoError(t, keyfile.Write(&b, f))
	assert.Contains(t, b.String(), "192.0.2.1 "+secretA+"\n", "a plain secret goes bare")
	assert.Contains(t, b.String(), `2001:db8::/64 "fake secret # with \"quotes\" and \\"`)
	assert.Contains(t, b.String(), "192.0.2.2 ao send=1 recv=2 alg=hmac(sha1) mac=12 \""+secretB+"\"\n", "a secret with blanks in quotes")
	back, err := keyfile.Parse(strings.NewReader(b.String()), "written")
	require.NoError(t, err)
	assert.Equal(t, f, back)

	for _, bad := range []keyfile.File{
		{Keys: []tcpmd5.Key{{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte("fake\x00nul")}}},
		{Keys: []tcpmd5.Key{{Peer: netip.MustParsePrefix("192.0.2.0/24"), Ifindex: 7, Secret: []byte("fake-secret-vrf")}}},
	} {
		var out strings.Builder
		err := keyfile.Write(&out, bad)
		require.Error(t, err)
		assert.Contains(t, err.Error(), bad.Keys[0].Peer.String())
		assert.NotContains(t, err.Error(), "fake")
	}
}
