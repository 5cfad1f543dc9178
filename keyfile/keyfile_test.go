package keyfile_test

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/keyfile"
)

const (
	secretA = "fake-secret-alpha"
	secretB = "fake-secret-bravo two words"
)

func TestParse(t *testing.T) {
	t.Parallel()
	f, err := keyfile.Parse(strings.NewReader(
		"# peer secret\n\n   # indented comment\n192.0.2.1 "+secretA+"\n"+
			"2001:db8::/64\t  \""+secretB+"\"  \r\n"+
			"::ffff:198.51.100.0/120 "+secretA+"\n"+
			"192.0.2.7 "+secretA+" # router r1, AS 65001\n"+
			"192.0.2.8 "+secretA+"\t#no blank needed after #\n"+
			`192.0.2.9 "fake \"quoted\" # not a comment \\ end" # a comment`+"\n"+
			`192.0.2.10 "fake-secret-snug"# comment`+"\n"+
			"192.0.2.20 ao send=1 recv=2 alg=hmac(sha1) "+secretA+" # r20 speaks TCP-AO\n"+
			"192.0.2.20\tao\trecv=4  send=3 alg=cmac(aes128) mac=16 exclude-options \""+secretB+"\"\n"+
			"192.0.2.21 ao\n"+
			`192.0.2.22 ao send=1 recv=2 alg=hmac(sha256) "send=9"`+"\n"), "peers.keys")
	require.NoError(t, err)
	require.Len(t, f.AOKeys, 3)
	assert.Equal(t, tcpmd5.AOKey{Peer: netip.MustParsePrefix("192.0.2.20/32"), SendID: 1, RecvID: 2, Algorithm: "hmac(sha1)", MACLen: 12, Secret: []byte(secretA)}, f.AOKeys[0])
	assert.Equal(t, tcpmd5.AOKey{Peer: netip.MustParsePrefix("192.0.2.20/32"), SendID: 3, RecvID: 4, Algorithm: "cmac(aes128)", MACLen: 16, ExcludeOptions: true, Secret: []byte(secretB)}, f.AOKeys[1])
	assert.Equal(t, "send=9", string(f.AOKeys[2].Secret), "a quoted secret that looks like a parameter")
	keys := f.Keys
	require.Len(t, keys, 8)
	assert.Equal(t, "ao", string(keys[7].Secret), "a bare ao with nothing after it is an MD5 secret")
	assert.Equal(t, netip.MustParsePrefix("192.0.2.1/32"), keys[0].Peer)
	assert.Equal(t, secretA, string(keys[0].Secret))
	assert.Equal(t, netip.MustParsePrefix("2001:db8::/64"), keys[1].Peer)
	assert.Equal(t, secretB, string(keys[1].Secret), "quotes keep inner blanks")
	assert.Equal(t, netip.MustParsePrefix("198.51.100.0/24"), keys[2].Peer, "v4-mapped prefixes become IPv4")
	assert.Equal(t, secretA, string(keys[3].Secret), "a comment after the secret is not part of it")
	assert.Equal(t, secretA, string(keys[4].Secret))
	assert.Equal(t, `fake "quoted" # not a comment \ end`, string(keys[5].Secret))
	assert.Equal(t, "fake-secret-snug", string(keys[6].Secret))
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, input, want string
	}{
		{"secret only", secretA + "\n", "peers.keys:1: want a peer and a secret"},
		{"secret first", "# swapped\n" + secretA + " 192.0.2.1\n", "peers.keys:2: the first field is not an IP address"},
		{"host bits", "192.0.2.1/24 " + secretA + "\n", "did you mean 192.0.2.0/24"},
		{"duplicate", "192.0.2.1 " + secretA + "\n192.0.2.1/32 " + secretA + "\n", "peers.keys:2: peer 192.0.2.1/32 already has a key on line 1"},
		{"too long", "192.0.2.1 " + strings.Repeat("x", tcpmd5.MaxSecretLen+1) + "\n", "longer than the kernel's limit"},
		{"unknown zone", "fe80::1%no-such-if0 " + secretA + "\n", `the zone names no interface on this host`},
		{"two words unquoted", "192.0.2.1 " + secretA + " more\n", "peers.keys:1: more than a secret follows the peer; put a secret with blanks in double quotes"},
		{"# inside a bare word", "192.0.2.1 " + secretA + "#x\n", "the secret holds # or \""},
		{"quote inside a bare word", "192.0.2.1 " + secretA + "\"\n", "the secret holds # or \""},
		{"comment, no secret", "192.0.2.1 # " + secretA + "\n", "no secret before the comment"},
		{"unclosed quote", "192.0.2.1 \"" + secretA + "\n", `the quoted secret has no closing "`},
		{"stray backslash", "192.0.2.1 \"" + secretA + `\n"` + "\n", `\ goes only before " or \`},
		{"text glued to the quote", "192.0.2.1 \"" + secretA + "\"x\n", `a blank or a comment must follow the quoted secret's closing "`},
		{"empty quotes", "192.0.2.1 \"\"\n", "the secret is empty"},
		{"AO without secret", "192.0.2.1 ao send=1 recv=2 alg=hmac(sha1) # " + secretA + "\n", "peers.keys:1: no secret after the AO parameters"},
		{"AO without KeyIDs", "192.0.2.1 ao alg=hmac(sha1) " + secretA + "\n", "give both send=N and recv=N"},
		{"AO unknown word", "192.0.2.1 ao send=1 recv=2 alg=hmac(sha1) colour=red " + secretA + "\n", "more than a secret follows the peer"},
		{"AO bad algorithm", "192.0.2.1 ao send=1 recv=2 alg=MD5! " + secretA + "\n", "not a kernel crypto name"},
		{"AO duplicate", "192.0.2.1 ao send=1 recv=2 alg=hmac(sha1) " + secretA + "\n192.0.2.1/32 ao recv=2 send=1 alg=hmac(sha256) " + secretA + "\n", "peers.keys:2: peer 192.0.2.1/32 already has an AO key with send=1 recv=2 on line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := keyfile.Parse(strings.NewReader(tt.input), "peers.keys")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NotContains(t, err.Error(), secretA)
			assert.NotContains(t, err.Error(), "xxxxxxxx")
		})
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	f, err := keyfile.Parse(strings.NewReader(
		"0.0.0.0/0 a-wide\n192.0.2.0/24 b-net\n192.0.2.9 c-host\n2001:db8::/32 d-v6\n"+
			"198.51.100.0/24 ao send=1 recv=2 alg=hmac(sha1) e-ao\n198.51.100.0/24 ao send=3 recv=4 alg=hmac(sha1) f-ao\n"+
			"198.51.100.7 g-md5-host\n"), "k")
	require.NoError(t, err)
	for addr, want := range map[string]string{
		"192.0.2.9":          "c-host",
		"192.0.2.10":         "b-net",
		"::ffff:192.0.2.10":  "b-net",
		"203.0.113.1":        "a-wide",
		"2001:db8::1":        "d-v6",
		"2001:db8::1%lo":     "d-v6",
		"2001:db9::1":        "",
		"::ffff:203.0.113.1": "a-wide",
	} {
		found := f.Lookup(netip.MustParseAddr(addr))
		assert.Empty(t, found.AOKeys)
		if want == "" {
			assert.Empty(t, found.Keys, addr)
			continue
		}
		require.Len(t, found.Keys, 1, addr)
		assert.Equal(t, want, string(found.Keys[0].Secret), addr)
	}
	found := f.Lookup(netip.MustParseAddr("198.51.100.8"))
	assert.Empty(t, found.Keys, "the AO /24 is longer than the MD5 /0")
	require.Len(t, found.AOKeys, 2)
	found = f.Lookup(netip.MustParseAddr("198.51.100.7"))
	assert.Empty(t, found.AOKeys, "the MD5 /32 is longer than the AO /24")
	require.Len(t, found.Keys, 1)
}

func TestLoadWarnsAboutOpenFiles(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Windows files have no group and other permission bits; nothing to warn about")
	}
	t.Parallel()
	for _, mode := range []os.FileMode{0o600, 0o400, 0o640, 0o604, 0o644, 0o660} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "peers.keys")
			require.NoError(t, os.WriteFile(p, []byte("192.0.2.1 "+secretA+"\n"), 0o600))
			require.NoError(t, os.Chmod(p, mode))
			f, warning, err := keyfile.Load(p)
			require.NoError(t, err)
			require.Len(t, f.Keys, 1)
			if mode&0o077 == 0 {
				assert.Empty(t, warning)
				return
			}
			assert.Contains(t, warning, fmt.Sprintf("accessible by group or others (mode %04o)", mode))
			assert.Contains(t, warning, "chmod 600 "+p)
			assert.NotContains(t, warning, secretA)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, _, err := keyfile.Load(filepath.Join(t.TempDir(), "absent.keys"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

// FuzzParse checks that Parse never panics, never quotes a secret in an
// error, and that what it accepts, written back out, parses to the same
// keys.
func FuzzParse(f *testing.F) {
	f.Add("192.0.2.1 " + secretA + "\n")
	f.Add("# c\n2001:db8::/64  " + secretB + "\n\n198.51.100.0/24 x\n")
	f.Add(secretA + " 192.0.2.1\n")
	f.Add("192.0.2.1/24 s\n192.0.2.1 s\n")
	f.Add(`192.0.2.1 "a \"b\" # \\c" # comment` + "\n")
	f.Add("192.0.2.1 s # c\n192.0.2.2 s#\n")
	f.Add("192.0.2.1 ao send=1 recv=2 alg=hmac(sha1) mac=4 exclude-options " + secretA + "\n")
	f.Add("192.0.2.1 ao send=1 recv=2 alg=hmac(sha1)\n192.0.2.2 ao\n")
	f.Add("192.0.2.1 s\n192.0.2.1 from=2026-12-01T02:00:00Z " + secretA + "\n")
	f.Add("192.0.2.2 ao send=1 recv=1 alg=hmac(sha1) send-from=2026-12-01T02:00:00.5+01:00 accept-until=2027-01-01T00:00:00Z " + secretB + "\n")
	f.Fuzz(func(t *testing.T, input string) {
		parsed, err := keyfile.Parse(strings.NewReader(input), "fuzz")
		if err != nil {
			// The secret is what follows the first blank of a line: none
			// may show in the error, unless the error has that text anyway
			// (the peer field as given, quoted or normalized, and the
			// examples and fixed prose of the messages).
			// The lifetime words' names are named by the errors that
			// refuse them, as the AO parameters are.
			const examples = "192.0.2.1 or 2001:db8::/64 (want: PEER SECRET) PEER ao send=N recv=N alg=NAME SECRET" +
				" from=TIME until= send-from= send-until= accept-from= accept-until=" +
				" more than a secret follows the peer; put a secret with blanks in double quotes; # starts a comment"
			for line := range strings.Lines(input) {
				line = strings.TrimSpace(line)
				if i := strings.IndexAny(line, " \t"); i >= 0 {
					peer, s := line[:i], strings.TrimSpace(line[i+1:])
					echoed := peer + fmt.Sprintf("%q", peer) + examples
					if k, err := tcpmd5.ParseKey(peer, "x"); err == nil {
						echoed += k.Peer.String()
					}
					if len(s) >= 8 && !strings.Contains(echoed, s) {
						assert.NotContains(t, err.Error(), s)
					}
				}
			}
			return
		}
		var b strings.Builder
		if err := keyfile.Write(&b, parsed); err != nil {
			assert.NotContains(t, err.Error(), "fake", "Write names no secret")
			return // a key the format cannot hold, which Parse made: only a VRF zone
		}
		again, err := keyfile.Parse(strings.NewReader(b.String()), "round trip")
		require.NoError(t, err)
		require.Len(t, again.Keys, len(parsed.Keys))
		assert.Equal(t, parsed, again, "what Write writes, Parse reads back")
	})
}

// TestParseTakesSecretsByteForByte: a secret is never altered. Blanks and
// a carriage return end a line; a Unicode space at the end of a secret is
// part of it; a control character is refused with the line's number; a
// byte-order mark, an overlong line and endless input each get an error
// that says what and where.
func TestParseTakesSecretsByteForByte(t *testing.T) {
	t.Parallel()
	f, err := keyfile.Parse(strings.NewReader("192.0.2.1 fake-secret-nbsp\u00a0\r\n192.0.2.2 \"fake\tsecret\"\n"), "k")
	require.NoError(t, err)
	require.Len(t, f.Keys, 2)
	assert.Equal(t, "fake-secret-nbsp\u00a0", string(f.Keys[0].Secret), "the no-break space is the secret's")
	assert.Equal(t, "fake\tsecret", string(f.Keys[1].Secret))
	for _, tc := range []struct {
		name string
		in   io.Reader
		want string
	}{
		{"vertical tab", strings.NewReader("# keys\n192.0.2.1 fake-secret-vt\v\n"), "k:2: byte 15 of the secret is a control character"},
		{"NUL", strings.NewReader("192.0.2.1 fake\x00secret\n"), "k:1: byte 5 of the secret is a control character"},
		{"byte-order mark", strings.NewReader("\ufeff192.0.2.1 fake-secret-alpha\n"), "k:1: the file starts with a byte-order mark"},
		{"long line", strings.NewReader("# ok\n192.0.2.1 " + strings.Repeat("x", 70<<10) + "\n"), "k:2: the line is longer than 64 KiB"},
		{"endless zeros", io.LimitReader(zeros{}, 1<<20), "k:1: the line is longer than 64 KiB"},
	} {
		_, err := keyfile.Parse(tc.in, "k")
		require.Error(t, err, tc.name)
		assert.Contains(t, err.Error(), tc.want, tc.name)
		assert.NotContains(t, err.Error(), "fake", tc.name)
	}
}

// zeros reads as /dev/zero does.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
