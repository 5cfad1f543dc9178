package tcpmd5_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
)

const aoSecret = "fake-ao-secret-alpha"

func TestParseAOKey(t *testing.T) {
	k, err := tcpmd5.ParseAOKey("192.0.2.1", "send=1 recv=2 alg=hmac(sha1)", aoSecret)
	require.NoError(t, err)
	assert.Equal(t, tcpmd5.AOKey{Peer: netip.MustParsePrefix("192.0.2.1/32"), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", MACLen: 12, Secret: []byte(aoSecret)}, k)

	k, err = tcpmd5.ParseAOKey("::ffff:198.51.100.0/120", " recv=255  send=0 alg=cmac(aes128) mac=16 exclude-options ", aoSecret)
	require.NoError(t, err)
	assert.Equal(t, netip.MustParsePrefix("198.51.100.0/24"), k.Peer, "v4-mapped prefixes become IPv4")
	assert.Equal(t, uint8(0), k.SendID)
	assert.Equal(t, uint8(255), k.RecvID)
	assert.Equal(t, 16, k.MACLen)
	assert.True(t, k.ExcludeOptions)
}

// TestAOKeyBadInput: every invalid key is refused with an error that says
// what to do, and never shows the secret.
func TestAOKeyBadInput(t *testing.T) {
	good := func() tcpmd5.AOKey {
		return tcpmd5.AOKey{Peer: netip.MustParsePrefix("192.0.2.1/32"), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", Secret: []byte(aoSecret)}
	}
	for _, tc := range []struct {
		name string
		key  func() tcpmd5.AOKey
		want string
	}{
		{"no peer", func() tcpmd5.AOKey { k := good(); k.Peer = netip.Prefix{}; return k }, "no valid Peer"},
		{"host bits", func() tcpmd5.AOKey { k := good(); k.Peer = netip.MustParsePrefix("192.0.2.1/24"); return k }, "did you mean 192.0.2.0/24"},
		{"negative ifindex", func() tcpmd5.AOKey { k := good(); k.Ifindex = -1; return k }, "Ifindex -1 is negative"},
		{"empty secret", func() tcpmd5.AOKey { k := good(); k.Secret = nil; return k }, "the secret is empty"},
		{"long secret", func() tcpmd5.AOKey { k := good(); k.Secret = []byte(strings.Repeat("x", 81)); return k }, "longer than the kernel's limit of 80"},
		{"no algorithm", func() tcpmd5.AOKey { k := good(); k.Algorithm = ""; return k }, "no Algorithm"},
		{"odd algorithm", func() tcpmd5.AOKey { k := good(); k.Algorithm = "HMAC SHA1"; return k }, "not a kernel crypto name"},
		{"long algorithm", func() tcpmd5.AOKey { k := good(); k.Algorithm = "hmac(" + strings.Repeat("a", 60) + ")"; return k }, "longer than the kernel's 63 bytes"},
		{"MAC too long", func() tcpmd5.AOKey { k := good(); k.MACLen = 17; return k }, "MACLen 17 does not fit a SYN's option space"},
		{"negative MAC", func() tcpmd5.AOKey { k := good(); k.MACLen = -1; return k }, "MACLen -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.key()
			for _, call := range []func() error{
				func() error {
					_, err := (&tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{k}}).Listen(t.Context(), "tcp", "127.0.0.1:0")
					return err
				},
				func() error {
					_, err := (&tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{k}}).Dial("tcp", "127.0.0.1:1")
					return err
				},
				func() error { return tcpmd5.AddAOKey(nil, k) },
				func() error {
					ln, err := (&tcpmd5.ListenConfig{AllowUnsigned: true}).Listen(t.Context(), "tcp", "127.0.0.1:0")
					require.NoError(t, err)
					defer ln.Close()
					return ln.SetAOKey(k)
				},
			} {
				err := call()
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
				assert.NotContains(t, err.Error(), aoSecret)
			}
		})
	}
	for _, tc := range []struct{ peer, spec, want string }{
		{"192.0.2.1", "send=1 alg=hmac(sha1)", "give both send=N and recv=N"},
		{"192.0.2.1", "send=1 recv=256 alg=hmac(sha1)", `recv= wants a KeyID from 0 to 255`},
		{"192.0.2.1", "send=x recv=2 alg=hmac(sha1)", `send= wants a KeyID`},
		{"192.0.2.1", "send=1 recv=2 alg=hmac(sha1) mac=big", `mac= wants a MAC length`},
		{"192.0.2.1", "send=1 recv=2 alg=hmac(sha1) colour=red", `word 4 (not shown) is none of send=N`},
		// A secret where a word belongs is never repeated.
		{"192.0.2.1", "send=1 recv=2 alg=hmac(sha1) " + aoSecret, `word 4 (not shown)`},
		{"192.0.2.1", "send=" + aoSecret + " recv=2 alg=hmac(sha1)", `send= wants a KeyID`},
		{"192.0.2.1", "send=1 recv=2 mac=" + aoSecret + " alg=hmac(sha1)", `mac= wants a MAC length`},
		{"192.0.2.1", "send=1 recv=2", "no Algorithm"},
		{"not-an-address", "send=1 recv=2 alg=hmac(sha1)", "is not an IP address"},
	} {
		_, err := tcpmd5.ParseAOKey(tc.peer, tc.spec, aoSecret)
		require.Error(t, err, tc.spec)
		assert.Contains(t, err.Error(), tc.want)
		assert.NotContains(t, err.Error(), aoSecret)
	}
	_, err := tcpmd5.ParseAOKey("192.0.2.1", "send=1 recv=2 alg=Fake+Secret/9", aoSecret)
	require.ErrorContains(t, err, "the Algorithm (not shown) is not a kernel crypto name")
	assert.NotContains(t, err.Error(), "Fake+Secret/9")
}

// TestAOKeyNeverPrintsTheSecret: no verb shows the secret.
func TestAOKeyNeverPrintsTheSecret(t *testing.T) {
	k := tcpmd5.AOKey{Peer: netip.MustParsePrefix("2001:db8::/64"), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", MACLen: 12, Secret: []byte(aoSecret), Ifindex: 3, ExcludeOptions: true}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		out := fmt.Sprintf(verb, k)
		assert.NotContains(t, out, aoSecret, verb)
		assert.NotContains(t, out, fmt.Sprintf("%x", aoSecret), verb)
		assert.Contains(t, out, "<redacted>", verb)
	}
	assert.Equal(t, "2001:db8::/64%3 send 1 recv 2 hmac(sha1) mac 12 exclude-options secret:<redacted>", k.String())
	assert.Equal(t, `tcpmd5.AOKey{Peer:netip.MustParsePrefix("2001:db8::/64"), SendID:1, RecvID:2, Algorithm:"hmac(sha1)", MACLen:12, Secret:<redacted>, Ifindex:3, ExcludeOptions:true}`, fmt.Sprintf("%#v", k))
	assert.Contains(t, fmt.Sprintf("%v", tcpmd5.AOKey{}), "<no peer>")
}

// FuzzParseAOKey: ParseAOKey never panics, never shows the secret in an
// error, and what it accepts, written back as words, parses to the same
// key.
func FuzzParseAOKey(f *testing.F) {
	f.Add("192.0.2.1", "send=1 recv=2 alg=hmac(sha1)", aoSecret)
	f.Add("2001:db8::/64", "recv=255 send=0 alg=cmac(aes128) mac=16 exclude-options", aoSecret)
	f.Add("::ffff:10.0.0.0/104", "send=1 recv=1 alg=hmac(sha256) mac=4", "x")
	f.Add("192.0.2.1", "send=1 recv=2", "")
	f.Fuzz(func(t *testing.T, peer, spec, secret string) {
		k, err := tcpmd5.ParseAOKey(peer, spec, secret)
		if err != nil {
			if len(secret) >= 8 && !strings.Contains(peer+spec, secret) {
				assert.NotContains(t, err.Error(), secret)
			}
			return
		}
		words := fmt.Sprintf("send=%d recv=%d alg=%s mac=%d", k.SendID, k.RecvID, k.Algorithm, k.MACLen)
		if k.ExcludeOptions {
			words += " exclude-options"
		}
		p := k.Peer.String()
		if k.Ifindex != 0 { // only a host carries a zone
			p = k.Peer.Addr().String() + "%" + fmt.Sprint(k.Ifindex)
		}
		again, err := tcpmd5.ParseAOKey(p, words, string(k.Secret))
		require.NoError(t, err)
		assert.Equal(t, k, again)
		assert.NotContains(t, fmt.Sprint(k), "secret:"+secret+" ")
	})
}
