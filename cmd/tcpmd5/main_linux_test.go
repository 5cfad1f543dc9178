package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/bgp"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
)

// The secrets of these tests: obviously fake, and checked never to appear in
// the command's output.
const (
	secretA = "fake-secret-alpha"
	secretB = "fake-secret-bravo"
)

var secrets = []string{secretA, secretB}

// The addresses of these tests, in 127.3.0.0/16 and in a network namespace
// per test: the peer the command talks to, the command's source address,
// and a third host.
const (
	peerAddr  = "127.3.0.1"
	ourAddr   = "127.3.0.2"
	otherAddr = "127.3.0.9"
)

var binary string

// TestMain builds the command once; the tests run the binary.
func TestMain(m *testing.M) {
	if program := os.Getenv("TCPMD5_SECCOMP_EXEC"); program != "" {
		seccompHelper(program)
	}
	// A kernel runner (tools/kernels/run) hands over the command it built:
	// no Go toolchain runs inside the test kernels.
	if binary = os.Getenv("TCPMD5_CMD_BINARY"); binary != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tcpmd5-cmd-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "tcpmd5")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic("building the command: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs the command with args and stdin and requires that no secret
// shows in its output. Call it on the goroutine that entered the test's
// network namespace: the child inherits the calling thread's namespace.
func run(t *testing.T, stdin string, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !assert.ErrorAs(t, err, &ee) {
		t.FailNow()
	}
	r := result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	requireNoSecret(t, r.stdout+r.stderr)
	return r
}

func requireNoSecret(t *testing.T, out string) {
	t.Helper()
	for _, s := range secrets {
		require.NotContains(t, out, s, "a secret was printed")
	}
}

func requireMD5(t *testing.T) {
	t.Helper()
	if !tcpmd5.Supported() {
		testenv.Missing(t, "this kernel does not sign TCP segments (no CONFIG_TCP_MD5SIG, or a sandbox)", "run the tests on a Linux kernel with CONFIG_TCP_MD5SIG=y")
	}
}

func key(t *testing.T, peer, secret string) tcpmd5.Key {
	t.Helper()
	k, err := tcpmd5.ParseKey(peer, secret)
	require.NoError(t, err)
	return k
}

// keyFile writes a key file with the given mode and returns its path.
func keyFile(t *testing.T, mode os.FileMode, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "peers.keys")
	require.NoError(t, os.WriteFile(p, []byte(content), mode))
	require.NoError(t, os.Chmod(p, mode))
	return p
}

// serve accepts connections on ln and hands each to fn until ln closes;
// t's cleanup closes ln and waits for every goroutine.
func serve(t *testing.T, ln net.Listener, fn func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				fn(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

func echo(c net.Conn) { _, _ = io.Copy(c, c) }

// listen starts a tcpmd5 listener for keys on peerAddr in the test's
// namespace, serving fn.
func listen(t *testing.T, fn func(net.Conn), keys ...tcpmd5.Key) *tcpmd5.Listener {
	t.Helper()
	return listenWith(t, tcpmd5.ListenConfig{Keys: keys}, fn)
}

// listenWith starts a tcpmd5 listener of lc on peerAddr in the test's
// namespace, serving fn.
func listenWith(t *testing.T, lc tcpmd5.ListenConfig, fn func(net.Conn)) *tcpmd5.Listener {
	t.Helper()
	ln, err := lc.Listen(context.Background(), "tcp4", peerAddr+":0")
	require.NoError(t, err)
	serve(t, ln, fn)
	return ln
}

// TestChildInheritsNamespace shows what every other test relies on: a
// command started from the goroutine that entered a network namespace runs
// in that namespace.
func TestChildInheritsNamespace(t *testing.T) {
	t.Parallel()
	host, err := os.Readlink("/proc/thread-self/ns/net")
	require.NoError(t, err)
	testenv.Netns(t)
	want, err := os.Readlink("/proc/thread-self/ns/net")
	require.NoError(t, err)
	require.NotEqual(t, host, want, "the test did not enter a namespace of its own")
	out, err := exec.Command("readlink", "/proc/self/ns/net").Output()
	require.NoError(t, err)
	assert.Equal(t, want, strings.TrimSpace(string(out)))
}

// probeJSON is the part of probe -json the tests read.
// dropJSON is a line of watch -json, and a drop in probe -json.
type dropJSON struct {
	Time   time.Time `json:"time"`
	Remote string    `json:"remote"`
	Local  string    `json:"local"`
	Reason string    `json:"reason"`
	Flags  string    `json:"flags"`
	Count  uint64    `json:"count"`
}

type probeJSON struct {
	Target         string            `json:"target"`
	Source         string            `json:"source"`
	Verdict        string            `json:"verdict"`
	Summary        string            `json:"summary"`
	Unsigned       string            `json:"unsigned"`
	PeerOnThisHost bool              `json:"peer_on_this_host"`
	Counters       map[string]uint64 `json:"counters_moved"`
	Drops          []dropJSON        `json:"drops"`
	DropsNote      string            `json:"drops_note"`
	Greeting       *struct {
		Bytes int    `json:"bytes"`
		Text  string `json:"text"`
		End   string `json:"end"`
		BGP   *struct {
			Type int `json:"type"`
			Open *struct {
				Version    int    `json:"version"`
				AS         uint32 `json:"as"`
				HoldTime   int    `json:"hold_time"`
				Identifier string `json:"bgp_identifier"`
			} `json:"open"`
		} `json:"bgp"`
	} `json:"greeting"`
}

// TestProbeVerdicts reproduces each verdict of probe against a real peer,
// each in a network namespace of its own so that the drop counters the
// command reports move only for its own segments.
func TestProbeVerdicts(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	open := bgp.Open{Version: 4, AS: 4200000001, HoldTime: 90, Identifier: netip.MustParseAddr("192.0.2.7")}
	tests := []struct {
		name     string
		peer     func(t *testing.T) string // starts the peer, returns its address
		secret   string                    // the secret probe uses
		verdict  string
		code     int
		counter  string // the drop counter that must move; "" for none
		retry    string // the one the unsigned retry moves too; "" for none
		reason   string // the drop reason the kernel must report, where it reports them
		unsigned string
		text     string // in the human output
	}{
		{
			name: "right key",
			peer: func(t *testing.T) string {
				return listen(t, echo, key(t, ourAddr, secretA)).Addr().String()
			},
			secret: secretA, verdict: "signed", code: 0,
			text: "the peer accepted our signature",
		},
		{
			name: "wrong key",
			peer: func(t *testing.T) string {
				return listen(t, echo, key(t, ourAddr, secretA)).Addr().String()
			},
			secret: secretB, verdict: "key-mismatch", code: 1, counter: netstat.MD5Failure, retry: netstat.MD5NotFound, reason: "md5-mismatch", unsigned: "no answer either",
			text: "its key for our address 127.3.0.2 differs from ours",
		},
		{
			name: "peer without a key for us",
			peer: func(t *testing.T) string {
				return listen(t, echo, key(t, otherAddr, secretA)).Addr().String()
			},
			secret: secretA, verdict: "peer-has-no-key", code: 1, counter: netstat.MD5Unexpected, reason: "md5-unexpected", unsigned: "connected",
			text: "the peer holds no key for our address 127.3.0.2: it dropped our signed SYN, completed an unsigned handshake and reset it",
		},
		{
			name: "closed port",
			peer: func(t *testing.T) string {
				ln, err := net.Listen("tcp4", peerAddr+":0")
				require.NoError(t, err)
				addr := ln.Addr().String()
				ln.Close()
				return addr
			},
			secret: secretA, verdict: "port-closed", code: 1, unsigned: "connection refused",
			text: "nothing listens on that port",
		},
		{
			name: "peer speaks BGP first",
			peer: func(t *testing.T) string {
				ln := listen(t, func(c net.Conn) {
					_, _ = c.Write(bgp.AppendOpen(nil, open))
					_, _ = io.Copy(io.Discard, c)
				}, key(t, ourAddr, secretA))
				return ln.Addr().String()
			},
			secret: secretA, verdict: "signed", code: 0,
			text: "BGP OPEN: version 4, AS 4200000001, hold time 90s, BGP identifier 192.0.2.7",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			testenv.Netns(t)
			addr := tt.peer(t)
			file := keyFile(t, 0o600, "# the peer\n"+peerAddr+" "+tt.secret+"\n")
			args := []string{"probe", "-key-file", file, "-source", ourAddr, "-timeout", "1s", "-wait", "500ms"}

			r := run(t, "", nil, append(args, "-json", addr)...)
			require.Equal(t, tt.code, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			var got probeJSON
			require.NoError(t, json.Unmarshal([]byte(r.stdout), &got), r.stdout)
			assert.Equal(t, tt.verdict, got.Verdict)
			assert.Equal(t, addr, got.Target)
			assert.Equal(t, ourAddr, got.Source)
			assert.True(t, got.PeerOnThisHost)
			assert.Contains(t, got.Unsigned, tt.unsigned)
			assert.Contains(t, r.stderr, "waiting up to 1s for an answer", "no progress line")
			assert.NotContains(t, r.stderr, "warning", "a 0600 key file needs no warning")
			if tt.counter == "" {
				assert.Empty(t, got.Counters, "a drop counter moved on a good connection")
			} else {
				assert.Positive(t, got.Counters[tt.counter], "%s did not move: %v", tt.counter, got.Counters)
				want := 1
				if tt.retry != "" {
					want++
					assert.Positive(t, got.Counters[tt.retry], "the unsigned retry's %s is not counted: %v", tt.retry, got.Counters)
				}
				assert.Len(t, got.Counters, want, "only %s and %q should move: %v", tt.counter, tt.retry, got.Counters)
			}
			if drops, _, _ := testenv.Has(testenv.Tracepoints); drops {
				assert.Empty(t, got.DropsNote)
				if tt.reason == "" {
					assert.Empty(t, got.Drops, "a drop reported on a good connection")
				} else {
					// A line per reason, each from our address to the
					// peer's, and as many drops of each reason as its
					// counter moved over both attempts.
					byReason := map[string]uint64{}
					for _, d := range got.Drops {
						assert.Equal(t, addr, d.Local)
						assert.Equal(t, ourAddr, netip.MustParseAddrPort(d.Remote).Addr().String())
						assert.Equal(t, "S", d.Flags)
						byReason[d.Reason] += d.Count
					}
					assert.Positive(t, byReason[tt.reason], "no %s drop: %+v", tt.reason, got.Drops)
					for counter, reason := range map[string]string{netstat.MD5Failure: "md5-mismatch", netstat.MD5NotFound: "md5-missing", netstat.MD5Unexpected: "md5-unexpected"} {
						assert.Equal(t, got.Counters[counter], byReason[reason], "%s moved by %d, the drops of %s add up to %d", counter, got.Counters[counter], reason, byReason[reason])
					}
					assert.Contains(t, got.Summary, "the kernel reports: "+addr+" dropped")
				}
			} else {
				assert.NotEmpty(t, got.DropsNote, "no drop events, and the probe does not say why")
			}
			switch tt.verdict {
			case "signed":
				require.NotNil(t, got.Greeting)
			case "peer-has-no-key":
				require.NotNil(t, got.Greeting)
				assert.Equal(t, "reset", got.Greeting.End, "the listener's policy resets unsigned peers")
			}
			if tt.name == "peer speaks BGP first" {
				require.NotNil(t, got.Greeting.BGP)
				require.NotNil(t, got.Greeting.BGP.Open)
				assert.Equal(t, uint32(4200000001), got.Greeting.BGP.Open.AS)
				assert.Equal(t, 90, got.Greeting.BGP.Open.HoldTime)
				assert.Equal(t, "192.0.2.7", got.Greeting.BGP.Open.Identifier)
			}

			r = run(t, "", nil, append(args, addr)...)
			require.Equal(t, tt.code, r.code, r.stderr)
			assert.Regexp(t, regexp.MustCompile(`(?m)^verdict +`+tt.verdict+`$`), r.stdout)
			assert.Contains(t, r.stdout, tt.text)
			if tt.counter != "" {
				assert.Regexp(t, regexp.MustCompile(`counters +`+tt.counter+` \+\d+: `), r.stdout)
			}
			if drops, _, _ := testenv.Has(testenv.Tracepoints); drops && tt.reason != "" {
				assert.Regexp(t, regexp.MustCompile(`dropped +\d+ \[S\] from `+regexp.QuoteMeta(ourAddr)+`:\d+ to `+regexp.QuoteMeta(addr)+`: `+tt.reason), r.stdout)
			}

			// Without -source the kernel picks our address (127.0.0.1 here,
			// which the peer may hold no key for): whatever the verdict, the
			// command gives one, and does not crash.
			r = run(t, "", nil, "probe", "-key-file", file, "-timeout", "1s", "-wait", "200ms", addr)
			assert.NotContains(t, r.stderr, "panic")
			assert.Contains(t, []int{0, 1}, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			assert.Regexp(t, regexp.MustCompile(`(?m)^verdict +\S+$`), r.stdout)
		})
	}
}

// TestProbeWithoutSource: without -source the kernel picks our address,
// and no error names a <nil> one.
func TestProbeWithoutSource(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	addr := listen(t, echo, key(t, "127.0.0.1", secretA)).Addr().String()
	file := keyFile(t, 0o600, peerAddr+" "+secretB+"\n")
	r := run(t, "", nil, "probe", "-key-file", file, "-timeout", "1s", "-wait", "200ms", "-json", addr)
	require.Equal(t, 1, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	var got probeJSON
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &got), r.stdout)
	assert.Equal(t, "key-mismatch", got.Verdict)
	assert.Equal(t, "127.0.0.1", got.Source, "the address the kernel dials from")
	assert.NotContains(t, r.stdout+r.stderr, "<nil>")
	human := run(t, "", nil, "probe", "-key-file", file, "-timeout", "1s", "-wait", "200ms", addr)
	assert.Equal(t, 1, human.code)
	assert.NotContains(t, human.stdout+human.stderr, "<nil>")
}
