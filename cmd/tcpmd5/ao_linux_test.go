package main_test

import (
	"encoding/json"
	"net"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// aoListen starts a tcpmd5 listener with AO keys on peerAddr in the test's
// namespace, serving an echo.
func aoListen(t *testing.T, keys ...tcpmd5.AOKey) *tcpmd5.Listener {
	t.Helper()
	return listenWith(t, tcpmd5.ListenConfig{AOKeys: keys}, echo)
}

func aoKeyFor(t *testing.T, peer, spec, secret string) tcpmd5.AOKey {
	t.Helper()
	k, err := tcpmd5.ParseAOKey(peer, spec, secret)
	require.NoError(t, err)
	return k
}

// TestAOProbeVerdicts: probe with AO keys, from a key file and from -ao,
// tells a peer that takes our AO key from one with another secret or other
// KeyIDs, and names the AO counter that moved.
func TestAOProbeVerdicts(t *testing.T) {
	testenv.Require(t, testenv.AO)
	t.Parallel()
	const theirs = "send=1 recv=2 alg=hmac(sha1)"
	for _, tc := range []struct {
		name, spec, secret, verdict, counter string
		code                                 int
	}{
		{"right key", "send=2 recv=1 alg=hmac(sha1)", secretA, "signed", "", 0},
		{"wrong secret", "send=2 recv=1 alg=hmac(sha1)", secretB, "key-mismatch", netstat.AOBad, 1},
		{"wrong KeyIDs", "send=5 recv=1 alg=hmac(sha1)", secretA, "key-mismatch", netstat.AOKeyNotFound, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			addr := aoListen(t, aoKeyFor(t, ourAddr, theirs, secretA)).Addr().String()
			file := keyFile(t, 0o600, peerAddr+" ao "+tc.spec+" "+tc.secret+" # the peer, TCP-AO\n")
			for _, keys := range [][]string{{"-key-file", file}, {"-ao", tc.spec}} {
				args := append([]string{"probe", "-source", ourAddr, "-timeout", "1s", "-wait", "200ms", "-json"}, keys...)
				r := run(t, "", []string{"TCPMD5_SECRET=" + tc.secret}, append(args, addr)...)
				require.Equal(t, tc.code, r.code, "%v\nstdout:\n%s\nstderr:\n%s", keys, r.stdout, r.stderr)
				var got probeJSON
				require.NoError(t, json.Unmarshal([]byte(r.stdout), &got), r.stdout)
				assert.Equal(t, tc.verdict, got.Verdict, keys)
				if tc.counter == "" {
					assert.Empty(t, got.Counters)
				} else {
					assert.Positive(t, got.Counters[tc.counter], "%s did not move: %v", tc.counter, got.Counters)
				}
			}
		})
	}
}

// TestAOListenDial: listen with an AO key from a key file, dial with -ao:
// the bytes cross both ways, and a dial with another secret does not
// connect.
func TestAOListenDial(t *testing.T) {
	testenv.Require(t, testenv.AO)
	t.Parallel()
	testenv.Netns(t)
	file := keyFile(t, 0o600, ourAddr+" ao send=1 recv=2 alg=cmac(aes128) "+secretA+"\n")
	ln := startListen(t, "from the listener\n", "-key-file", file, peerAddr+":0")
	require.Contains(t, ln.line, " with 1 keys")

	spec := "send=2 recv=1 alg=cmac(aes128)"
	wrong := run(t, "", []string{"TCPMD5_SECRET=" + secretB}, "dial", "-ao", spec, "-source", ourAddr, "-timeout", "700ms", ln.addr)
	assert.Equal(t, 1, wrong.code, wrong.stderr)
	r := run(t, "from the dialer\n", []string{"TCPMD5_SECRET=" + secretA}, "dial", "-ao", spec, "-source", ourAddr, ln.addr)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "from the listener\n", r.stdout)
	ln.requireExit(t)
	assert.Equal(t, "from the dialer\n", ln.stdout.String())

	// -ao with -key on listen makes AO keys of them.
	l2 := startListen(t, "", "-ao", "send=1 recv=2 alg=hmac(sha1)", "-key", ourAddr+"="+secretA, peerAddr+":0")
	d := &tcpmd5.Dialer{AOKeys: []tcpmd5.AOKey{aoKeyFor(t, peerAddr, "send=2 recv=1 alg=hmac(sha1)", secretA)}}
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ourAddr)}
	c, err := d.Dial("tcp4", l2.addr)
	require.NoError(t, err)
	st, err := tcpmd5.AOInfo(c.(*net.TCPConn))
	require.NoError(t, err)
	assert.Equal(t, uint8(2), st.Current)
	c.Close()
}

// TestAOUsageErrors: AO parameters that cannot work are usage errors, and
// no secret shows.
func TestAOUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dial", "-ao", "send=1 alg=hmac(sha1)", "127.0.0.1:1"}, "give both send=N and recv=N"},
		{[]string{"dial", "-ao", "send=1 recv=2 alg=hmac(sha1)", "-key-file", "/dev/null", "127.0.0.1:1"}, "-ao goes with -secret, -key"},
		{[]string{"listen", "-ao", "send=1 recv=2 mac=40 alg=hmac(sha1)", "-key", "127.0.0.2=" + secretA, "127.0.0.1:0"}, "MACLen 40 does not fit"},
	} {
		r := run(t, "", []string{"TCPMD5_SECRET=" + secretA}, tc.args...)
		assert.Equal(t, 2, r.code, "%v: %s", tc.args, r.stderr)
		assert.Contains(t, r.stderr, tc.want)
	}
	r := run(t, "", nil, "help")
	assert.Regexp(t, regexp.MustCompile(`192\.0\.2\.2 ao send=1 recv=2 alg=hmac\(sha1\) fake-secret-router-2`), r.stdout)
}
