package tcpmd5_test

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
)

// badSecret is the secret of every key in the bad-input tables: no error,
// however printed, may contain it.
const badSecret = "fake-secret-bad-input-7f3a"

// requireNoSecret fails t if err, in any of the forms a caller might print
// or log, shows badSecret.
func requireNoSecret(t *testing.T, err error) {
	t.Helper()
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
		s := fmt.Sprintf(verb, err)
		require.NotContains(t, s, badSecret, "the secret leaks through %s", verb)
		require.NotContains(t, s, fmt.Sprintf("%x", badSecret), "the secret leaks in hex through %s", verb)
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		require.NotContains(t, e.Error(), badSecret)
	}
}

// TestBadParseKey gives ParseKey every kind of invalid peer and secret: each
// gets an error that names the problem and never the secret, and none
// panics.
func TestBadParseKey(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", tcpmd5.MaxSecretLen+1)
	tests := []struct {
		peer, secret string
		want         string
	}{
		{"", badSecret, "is not an IP address or prefix"},
		{"not-an-address", badSecret, "is not an IP address or prefix"},
		{"192.0.2.256", badSecret, "is not an IP address or prefix"},
		{"192.0.2.1:179", badSecret, "is not an IP address or prefix"},
		{"[2001:db8::1]", badSecret, "is not an IP address or prefix"},
		{" 192.0.2.1", badSecret, "is not an IP address or prefix"},
		{"192.0.2.0/33", badSecret, "is not an IP address or prefix"},
		{"192.0.2.0/-1", badSecret, "is not an IP address or prefix"},
		{"2001:db8::/129", badSecret, "is not an IP address or prefix"},
		{"192.0.2.0/", badSecret, "is not an IP address or prefix"},
		{"192.0.2.1/24", badSecret, "host bits set; did you mean 192.0.2.0/24?"},
		{"2001:db8::1/64", badSecret, "host bits set; did you mean 2001:db8::/64?"},
		{"192.0.2.0/24%eth0", badSecret, "a zone goes with a single address, not a prefix"},
		{"fe80::1%md5t-no-such-if", badSecret, `the zone names no interface on this host`},
		{badSecret, "x", "the peer (26 bytes, not shown) is not an IP address"},
		{"fe80::1%" + badSecret, "x", "the zone names no interface on this host"},
		{"192.0.2.0/24%" + badSecret, "x", "a zone goes with a single address"},
		{strings.Repeat("a", 1<<20), "x", "the peer (1048576 bytes, not shown)"},
		{"fe80::1%0", badSecret, "interface index 0 is not a valid interface"},
		{"fe80::1%", badSecret, "the zone after % is empty"},
		{"fe80::1%-3", badSecret, "interface index -3 is not a valid interface"},
		{"192.0.2.1", "", "the secret is empty; give 1 to 80 bytes"},
		{"192.0.2.1", long, "the secret is 81 bytes, longer than the kernel's limit of 80"},
		{"2001:db8::/32", long, "the secret is 81 bytes"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.peer), func(t *testing.T) {
			t.Parallel()
			var k tcpmd5.Key
			var err error
			require.NotPanics(t, func() { k, err = tcpmd5.ParseKey(tt.peer, tt.secret) })
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.True(t, strings.HasPrefix(err.Error(), "tcpmd5: "), "%q does not start with tcpmd5:", err)
			assert.Equal(t, tcpmd5.Key{}, k, "a failed ParseKey returns the zero Key")
			requireNoSecret(t, err)
		})
	}
}

// badKeys are Key values no part of the API may install, each with the
// error it must get.
var badKeys = []struct {
	name string
	key  tcpmd5.Key
	want string
}{
	{"zero Peer", tcpmd5.Key{Secret: []byte(badSecret)}, "no valid Peer prefix"},
	{"host bits", tcpmd5.Key{Peer: netip.PrefixFrom(netip.MustParseAddr("192.0.2.1"), 24), Secret: []byte(badSecret)}, "did you mean 192.0.2.0/24?"},
	{"v4-mapped host bits", tcpmd5.Key{Peer: netip.PrefixFrom(netip.MustParseAddr("::ffff:192.0.2.1"), 120), Secret: []byte(badSecret)}, "host bits set"},
	{"negative Ifindex", tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte(badSecret), Ifindex: -1}, "Ifindex -1 is negative"},
	{"nil secret", tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32")}, "the secret is empty"},
	{"empty secret", tcpmd5.Key{Peer: netip.MustParsePrefix("2001:db8::/48"), Secret: []byte{}}, "the secret is empty"},
	{"81-byte secret", tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte(badSecret + strings.Repeat("x", tcpmd5.MaxSecretLen+1-len(badSecret)))}, "81 bytes"},
}

// TestBadKeys hands each invalid Key to every entry point that takes keys:
// each refuses it with the same explanation, before any socket is touched,
// on every OS.
func TestBadKeys(t *testing.T) {
	t.Parallel()
	plain, err := tcpmd5.Listen("tcp", "127.0.0.1:0") // no keys: a plain listener everywhere
	require.NoError(t, err)
	t.Cleanup(func() { plain.Close() })

	for _, bk := range badKeys {
		t.Run(bk.name, func(t *testing.T) {
			t.Parallel()
			good := tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: []byte(badSecret)}
			entries := []struct {
				name string
				call func() error
				op   bool // the error is a *net.OpError
			}{
				{"ListenConfig.Listen", func() error {
					lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{good, bk.key}}
					_, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
					return err
				}, true},
				{"Listen", func() error { _, err := tcpmd5.Listen("tcp4", "127.0.0.1:0", bk.key); return err }, true},
				{"Dialer.Dial", func() error {
					d := tcpmd5.Dialer{Keys: []tcpmd5.Key{bk.key, good}}
					_, err := d.Dial("tcp", plain.Addr().String())
					return err
				}, true},
				{"Control", func() error { return tcpmd5.Control(good, bk.key)("tcp4", "127.0.0.1:0", nil) }, false},
				{"SetKeys", func() error { return tcpmd5.SetKeys(nil, good, bk.key) }, false},
				{"Listener.SetKey", func() error { return plain.SetKey(bk.key) }, false},
			}
			for _, e := range entries {
				var err error
				require.NotPanics(t, func() { err = e.call() }, e.name)
				require.Error(t, err, e.name)
				assert.Contains(t, err.Error(), bk.want, e.name)
				assert.NotErrorIs(t, err, tcpmd5.ErrMD5Unsupported, "%s: a bad key is the caller's mistake on every OS", e.name)
				var oe *net.OpError
				assert.Equal(t, e.op, errors.As(err, &oe), "%s: %v", e.name, err)
				requireNoSecret(t, err)
			}
			assert.Empty(t, plain.Keys(), "a refused key was recorded")
		})
	}
}

// TestBadRemoveKey checks that RemoveKey ignores the secret, so a key
// without one is fine, but refuses a peer it could never have installed.
func TestBadRemoveKey(t *testing.T) {
	t.Parallel()
	ln, err := tcpmd5.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	require.NoError(t, ln.RemoveKey(tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32")}), "removing a key that is not there")
	for _, tt := range []struct {
		key  tcpmd5.Key
		want string
	}{
		{tcpmd5.Key{}, "no valid Peer prefix"},
		{tcpmd5.Key{Peer: netip.PrefixFrom(netip.MustParseAddr("2001:db8::1"), 64)}, "did you mean 2001:db8::/64?"},
		{tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Ifindex: -7}, "Ifindex -7 is negative"},
	} {
		var err error
		require.NotPanics(t, func() { err = ln.RemoveKey(tt.key) })
		require.ErrorContains(t, err, tt.want)
	}
}

// TestBadNetworksAndAddresses gives Listen and Dial networks and addresses
// they cannot use, keyed or not: the errors are the net package's own kind.
func TestBadNetworksAndAddresses(t *testing.T) {
	t.Parallel()
	k := tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte(badSecret)}
	tests := []struct {
		name string
		call func() error
		is   error // errors.Is target, or nil
		want string
	}{
		{"Listen udp", func() error { _, err := tcpmd5.Listen("udp", "127.0.0.1:0", k); return err }, nil, "unknown network udp"},
		{"Listen unix", func() error { _, err := tcpmd5.Listen("unix", "/tmp/x", k); return err }, nil, "unknown network unix"},
		{"Listen empty network", func() error { _, err := tcpmd5.Listen("", "127.0.0.1:0"); return err }, nil, "unknown network"},
		{"Listen bad port", func() error { _, err := tcpmd5.Listen("tcp", "127.0.0.1:99999", k); return err }, nil, "invalid port"},
		{"Listen no port", func() error { _, err := tcpmd5.Listen("tcp", "127.0.0.1", k); return err }, nil, "missing port"},
		{"Dial udp", func() error {
			_, err := (&tcpmd5.Dialer{Keys: []tcpmd5.Key{k}}).Dial("udp", "192.0.2.1:179")
			return err
		}, nil, "unknown network udp"},
		{"Dial no port", func() error {
			_, err := (&tcpmd5.Dialer{Keys: []tcpmd5.Key{k}}).Dial("tcp", "192.0.2.1")
			return err
		}, nil, "missing port"},
		{"Dial an address no key covers", func() error {
			_, err := (&tcpmd5.Dialer{Keys: []tcpmd5.Key{k}}).Dial("tcp", "127.0.0.1:9")
			return err
		}, tcpmd5.ErrNoKey, "no key covers the destination 127.0.0.1"},
		{"Dial a v4 address with a v6 key only", func() error {
			k6 := tcpmd5.Key{Peer: netip.MustParsePrefix("::/0"), Secret: []byte(badSecret)}
			_, err := (&tcpmd5.Dialer{Keys: []tcpmd5.Key{k6}}).Dial("tcp4", "127.0.0.1:9")
			return err
		}, tcpmd5.ErrNoKey, "no key covers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var err error
			require.NotPanics(t, func() { err = tt.call() })
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			var oe *net.OpError
			assert.ErrorAs(t, err, &oe, "want a *net.OpError, as the net package returns")
			if tt.is != nil {
				assert.ErrorIs(t, err, tt.is)
			}
			requireNoSecret(t, err)
		})
	}
}

// TestNilAndZeroValues: typed nil connections and a Listener that Listen
// did not make give errors, not panics, on every method.
func TestNilAndZeroValues(t *testing.T) {
	t.Parallel()
	k := tcpmd5.Key{Peer: netip.MustParsePrefix("127.0.0.1/32"), Secret: []byte(badSecret)}
	ao := tcpmd5.AOKey{Peer: k.Peer, Algorithm: "hmac(sha1)", Secret: []byte(badSecret)}
	for name, c := range map[string]syscall.Conn{
		"nil":              nil,
		"nil *TCPConn":     (*net.TCPConn)(nil),
		"nil *TCPListener": (*net.TCPListener)(nil),
	} {
		assert.Error(t, tcpmd5.SetKeys(c, k), name)
		assert.Error(t, tcpmd5.AddAOKey(c, ao), name)
		assert.Error(t, tcpmd5.RemoveAOKey(c, ao), name)
		assert.Error(t, tcpmd5.SetAOCurrent(c, 1), name)
		assert.Error(t, tcpmd5.SetAORNext(c, 1), name)
		_, err := tcpmd5.AOInfo(c)
		assert.Error(t, err, name)
	}
	var l tcpmd5.Listener
	assert.Nil(t, l.Addr())
	_, err := l.Accept()
	assert.Error(t, err)
	_, err = l.AcceptTCP()
	assert.Error(t, err)
	assert.Error(t, l.SetDeadline(time.Now()))
	assert.Error(t, l.Close())
	assert.Error(t, l.SetKey(k))
	assert.Error(t, l.SetAOKey(ao))
	assert.NoError(t, l.RemoveKey(k), "nothing to remove")
	assert.Empty(t, l.Keys())
	_, err = l.SyscallConn()
	assert.Error(t, err)
}

// TestIfindexRange: an Ifindex the kernel's 32-bit field cannot hold is an
// error, never truncated to another interface (1<<32 to the default VRF,
// 1<<32+1 to index 1).
func TestIfindexRange(t *testing.T) {
	t.Parallel()
	if strconv.IntSize < 64 {
		t.Skip("int holds no index beyond 31 bits here: nothing to truncate")
	}
	for _, idx := range []int64{1 << 31, 1 << 32, 1<<32 + 1} {
		k := tcpmd5.Key{Peer: netip.MustParsePrefix("192.0.2.1/32"), Secret: []byte(badSecret), Ifindex: int(idx)}
		_, err := tcpmd5.Listen("tcp4", "127.0.0.1:0", k)
		require.ErrorContains(t, err, "larger than any interface index")
		ao := tcpmd5.AOKey{Peer: k.Peer, Algorithm: "hmac(sha1)", Secret: k.Secret, Ifindex: int(idx)}
		_, err = (&tcpmd5.ListenConfig{AOKeys: []tcpmd5.AOKey{ao}}).Listen(context.Background(), "tcp4", "127.0.0.1:0")
		require.ErrorContains(t, err, "larger than any interface index")
	}
}

// TestErrorsAreShort holds every error string of the module, its own and
// its command's, to one sentence of about 100 characters (STYLE 22): the
// format an errors.New or fmt.Errorf is given, before peers and wrapped
// errors fill it in. Longer explanations go in doc comments.
func TestErrorsAreShort(t *testing.T) {
	fset := token.NewFileSet()
	var checked int
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, ok := sel.X.(*ast.Ident)
			if !ok || !(pkg.Name == "fmt" && sel.Sel.Name == "Errorf" || pkg.Name == "errors" && sel.Sel.Name == "New") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			require.NoError(t, err)
			checked++
			assert.LessOrEqual(t, len(s), 100, "%s: %s", fset.Position(lit.Pos()), s)
			return true
		})
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, checked, 50, "the walk found the module's errors")
}
