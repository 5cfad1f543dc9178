package main_test

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// The addresses of the TTL security tests, in 127.3.128.0/17 and in a
// network namespace per test: the peer and the command's source address.
// On loopback a segment arrives with the TTL it was sent with, so a peer
// that wants us at most 1 hop away (TTL 255) drops what a socket sends with
// the default TTL of 64.
const (
	ttlPeer = "127.3.128.1"
	ttlOurs = "127.3.128.2"
)

// minTTLDrops reads TCPMinTTLDrop in the calling thread's namespace.
func minTTLDrops(t *testing.T) uint64 {
	t.Helper()
	c, err := netstat.Read()
	require.NoError(t, err)
	return c[netstat.MinTTLDrop]
}

func TestTTLSecurityListenDial(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	file := keyFile(t, 0o600, ttlOurs+" "+secretA+"\n"+ttlPeer+" "+secretA+"\n")

	ln := startListen(t, "from the listener\n", "-ttl-security", "1", "-key-file", file, ttlPeer+":0")
	require.Regexp(t, `with 2 keys, TTL security of 1 hop\n$`, ln.line)
	addr := ln.addr

	// Not in subtests: the commands must start from this goroutine, the
	// one in the namespace. First a dial with the right key but the
	// default TTL: the listener drops its SYN in silence.
	before := minTTLDrops(t)
	refused := run(t, "", []string{"TCPMD5_SECRET=" + secretA}, "dial", "-source", ttlOurs, "-timeout", "700ms", addr)
	assert.Equal(t, 1, refused.code, "a dial without TTL security: %s", refused.stderr)
	assert.Contains(t, refused.stderr, "no answer to a signed SYN")
	assert.Contains(t, refused.stderr, "or the peer has TTL security on")
	assert.Contains(t, refused.stderr, "dial with -ttl-security N")
	assert.Empty(t, refused.stdout)
	assert.Positive(t, minTTLDrops(t)-before, "%s did not move: the listener did not drop the SYN for its TTL", netstat.MinTTLDrop)

	r := run(t, "from the dialer\n", []string{"TCPMD5_SECRET=" + secretA}, "dial", "-ttl-security", "1", "-source", ttlOurs, addr)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "from the listener\n", r.stdout)
	assert.Contains(t, r.stderr, "connected to "+addr+" from "+ttlOurs)
	assert.Contains(t, r.stderr, ", TTL security of 1 hop\n")

	ln.requireExit(t)
	assert.Equal(t, "from the dialer\n", ln.stdout.String())
}

// TestProbeTTLSecurity probes peers with and without TTL security, with
// and without it ourselves, each in a namespace of its own so that the
// counters probe names move only for its own segments.
func TestProbeTTLSecurity(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	tests := []struct {
		name      string
		peerHops  int    // the listener's TTLSecurity
		probeHops int    // probe's -ttl-security
		secret    string // the secret probe uses; the peer holds secretA
		verdict   string
		code      int
		counter   string // the only counter that must move; "" for none
		text      string // in the human output
		signedErr string // in signed_error
	}{
		{
			name: "both sides at 1 hop", peerHops: 1, probeHops: 1, secret: secretA,
			verdict: "signed", code: 0,
			text: "the peer accepted our signature",
		},
		{
			name: "peer at 1 hop, probe without", peerHops: 1, secret: secretA,
			verdict: "ttl-dropped", code: 1, counter: netstat.MinTTLDrop,
			text:      "the peer has TTL security (RFC 5082 GTSM) on and dropped our SYN, sent with the default TTL: probe with -ttl-security",
			signedErr: "no answer to a signed SYN",
		},
		{
			name: "probe at 1 hop, peer without", probeHops: 1, secret: secretA,
			verdict: "ttl-dropped", code: 1, counter: netstat.MinTTLDrop,
			text:      "the peer does not send so (its TTL security is off)",
			signedErr: "with TTL security, also that the peer sends with TTL 255 from at most 1 hops",
		},
		{
			name: "both sides at 1 hop, wrong key", peerHops: 1, probeHops: 1, secret: secretB,
			verdict: "key-mismatch", code: 1, counter: netstat.MD5Failure,
			text:      "its key for our address " + ttlOurs + " differs from ours",
			signedErr: "with TTL security, also that the peer sends with TTL 255 from at most 1 hops",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			lc := tcpmd5.ListenConfig{Keys: []tcpmd5.Key{key(t, ttlOurs, secretA)}, TTLSecurity: tt.peerHops}
			ln, err := lc.Listen(context.Background(), "tcp4", ttlPeer+":0")
			require.NoError(t, err)
			serve(t, ln, echo)
			addr := ln.Addr().String()
			file := keyFile(t, 0o600, ttlPeer+" "+tt.secret+"\n")
			args := []string{"probe", "-key-file", file, "-source", ttlOurs, "-timeout", "1s", "-wait", "200ms"}
			if tt.probeHops != 0 {
				args = append(args, "-ttl-security", "1")
			}

			r := run(t, "", nil, append(args, "-json", addr)...)
			require.Equal(t, tt.code, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			var got struct {
				probeJSON
				TTLSecurity int    `json:"ttl_security"`
				SignedError string `json:"signed_error"`
			}
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &got), r.stdout)
			assert.Equal(t, tt.verdict, got.Verdict)
			assert.Equal(t, tt.probeHops, got.TTLSecurity)
			assert.Contains(t, got.Summary, tt.text)
			assert.Contains(t, got.SignedError, tt.signedErr)
			assert.True(t, got.PeerOnThisHost)
			if tt.counter == "" {
				assert.Empty(t, got.Counters, "a drop counter moved on a good connection")
			} else {
				assert.Positive(t, got.Counters[tt.counter], "%s did not move: %v", tt.counter, got.Counters)
				want := 1
				if tt.verdict == "key-mismatch" { // the unsigned retry, dropped by the peer that holds a key for us
					want++
					assert.Positive(t, got.Counters[netstat.MD5NotFound], "the unsigned retry is not counted: %v", got.Counters)
				}
				assert.Len(t, got.Counters, want, "only %s and the retry's should move: %v", tt.counter, got.Counters)
			}
			if tt.verdict == "ttl-dropped" {
				assert.Empty(t, got.Unsigned, "after a TTL drop an unsigned attempt tells nothing more")
			}
			if tt.verdict == "key-mismatch" {
				assert.NotContains(t, got.Summary, "hops away", "on this host the counters rule out a TTL drop")
			}

			r = run(t, "", nil, append(args, addr)...)
			require.Equal(t, tt.code, r.code, r.stderr)
			assert.Regexp(t, regexp.MustCompile(`(?m)^verdict +`+tt.verdict+`$`), r.stdout)
			assert.Contains(t, r.stdout, tt.text)
			if tt.probeHops != 0 {
				assert.Regexp(t, regexp.MustCompile(`(?m)^TTL security +1 hops: we send with TTL 255 and drop answers with TTL below 255$`), r.stdout)
			} else {
				assert.NotContains(t, r.stdout, "TTL security  ")
			}
			if tt.counter != "" {
				assert.Regexp(t, regexp.MustCompile(`counters +`+tt.counter+` \+\d+: `), r.stdout)
			}
		})
	}
}

func TestTTLSecurityUsageErrors(t *testing.T) {
	t.Parallel()
	target := map[string]string{"probe": "192.0.2.1:179", "listen": "127.3.128.1:0", "dial": "192.0.2.1:179"}
	for _, command := range []string{"probe", "listen", "dial"} {
		for _, value := range []string{"-1", "256", "x", "1.5"} {
			t.Run(command+" "+value, func(t *testing.T) {
				t.Parallel()
				r := run(t, "", nil, command, "-key", "192.0.2.2="+secretA, "-ttl-security", value, target[command])
				assert.Equal(t, 2, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
				if value == "-1" || value == "256" {
					assert.Contains(t, r.stderr, "tcpmd5: -ttl-security "+value+": give 1 to 255 hops, or 0 for off")
				} else {
					assert.Contains(t, r.stderr, `invalid value "`+value+`" for flag -ttl-security`)
				}
				assert.Empty(t, r.stdout)
			})
		}
		t.Run(command+" -h", func(t *testing.T) {
			t.Parallel()
			r := run(t, "", nil, command, "-h")
			assert.Equal(t, 0, r.code)
			assert.Contains(t, r.stderr, "-ttl-security N")
			assert.Regexp(t, regexp.MustCompile(`(?m)^  tcpmd5 `+command+` -ttl-security 1 `), r.stderr)
		})
	}
	r := run(t, "", nil, "help")
	assert.Contains(t, r.stdout, "TTL security (GTSM, RFC 5082")
	assert.Equal(t, 3, strings.Count(r.stdout, "[-ttl-security N]"), r.stdout)
}
