package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
)

func TestCheck(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	// Kernels that keep optmem_max global show it only in the initial
	// network namespace, where the test starts.
	hostOptmem := strings.TrimSpace(readFile(t, "/proc/sys/net/core/optmem_max"))
	testenv.Netns(t)

	r := run(t, "", nil, "check")
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	for _, row := range []string{
		`signing +ok +yes`,
		`prefix keys +ok +yes`,
		`interface keys +\w+ +`,
		`MPTCP listeners +info +(yes|no)`,
		`optmem_max +info +(\d+ bytes|unknown +.*not visible in this network namespace)`,
		`keys per socket +info +\d+ +measured on a throwaway socket`,
		`listener steering +ok +classic BPF +a listener spread 300 keys over [2-9] sockets`,
		`self-test: right key +ok +connects`,
		`self-test: wrong key +ok +refused`,
		`self-test: no key +ok +refused`,
		`self-test: unsigned peer +ok +refused`,
		`TTL security +ok +yes +IP_TTL and IP_MINTTL`,
		`self-test: TTL security +ok +connects`,
		`self-test: default TTL +ok +refused .* \(TCPMinTTLDrop \+\d+\)$`,
	} {
		assert.Regexp(t, regexp.MustCompile(`(?m)^`+row), r.stdout)
	}
	if ao, _, _ := testenv.Has(testenv.AO); ao {
		for _, row := range []string{
			`TCP-AO +ok +yes +algorithms the kernel takes: hmac\(sha1\), cmac\(aes128\), hmac\(sha256\)`,
			`self-test: TCP-AO right key +ok +connects`,
			`self-test: TCP-AO wrong key +ok +refused`,
		} {
			assert.Regexp(t, regexp.MustCompile(`(?m)^`+row), r.stdout)
		}
		assert.Contains(t, r.stdout, "TCP-AO (RFC 5925) works")
	} else {
		assert.Regexp(t, regexp.MustCompile(`(?m)^TCP-AO +info +no +the kernel has no TCP-AO`), r.stdout)
		assert.Contains(t, r.stdout, "TCP-AO (RFC 5925) is not available here")
	}
	if events, _, _ := testenv.Has(testenv.Tracepoints); events {
		assert.Regexp(t, regexp.MustCompile(`(?m)^drop events +ok +yes +tcpmd5 watch names the peer`), r.stdout)
	} else {
		assert.Regexp(t, regexp.MustCompile(`(?m)^drop events +(info|warn) +(no|no permission) +drops: .*falls back to the counters`), r.stdout)
	}
	assert.NotContains(t, r.stdout, "FAIL")
	assert.Contains(t, r.stdout, "Signing works")
	assert.Contains(t, r.stdout, "TTL security (GTSM, RFC 5082) works")

	r = run(t, "", nil, "check", "-json")
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	var rep struct {
		Signing     bool `json:"signing"`
		TTLSecurity bool `json:"ttl_security"`
		Results     []struct {
			ID, Check, Status, Value, Detail string
			Number                           *int
			Unit                             *string
		} `json:"results"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
	assert.True(t, rep.Signing)
	assert.True(t, rep.TTLSecurity)
	byName := map[string]string{}
	numbers := map[string]int{}
	for _, res := range rep.Results {
		byName[res.Check] = res.Value
		if res.Number != nil {
			numbers[res.Check] = *res.Number
			require.NotNil(t, res.Unit, "%s: a number without its unit", res.ID)
		}
		assert.Regexp(t, `^[a-z0-9_]+$`, res.ID)
		assert.Contains(t, []string{"ok", "info", "warn", "skip"}, res.Status, "%s", res.ID)
	}
	assert.Contains(t, r.stdout, `"id": "keys_per_socket"`)
	assert.Contains(t, r.stdout, `"unit": "keys"`, "keys per socket are always measured")
	// Numbers are JSON numbers too, beside the words.
	assert.Equal(t, byName["keys per socket"], strconv.Itoa(numbers["keys per socket"]))
	assert.Greater(t, numbers["listener steering"], 1, "the steering row counts the listener's sockets")
	optmem := hostOptmem
	if b, err := os.ReadFile("/proc/sys/net/core/optmem_max"); err == nil {
		optmem = strings.TrimSpace(string(b))
		assert.Equal(t, optmem+" bytes", byName["optmem_max"])
		assert.Equal(t, optmem, strconv.Itoa(numbers["optmem_max"]))
	} else {
		assert.Equal(t, "unknown", byName["optmem_max"])
	}
	// The measured capacity agrees with the kernel's limit: each key is
	// charged about 136 bytes (sizeof(struct tcp_md5sig_key) on 64-bit).
	var n int
	_, err := fmt.Sscan(byName["keys per socket"], &n)
	require.NoError(t, err)
	var limit int
	_, err = fmt.Sscan(optmem, &limit)
	require.NoError(t, err)
	assert.InDelta(t, limit/136, n, float64(limit/136)/10, "keys per socket %d at optmem_max %d", n, limit)
	if mptcp, err := os.ReadFile("/proc/sys/net/mptcp/enabled"); err == nil && strings.TrimSpace(string(mptcp)) == "1" {
		assert.Equal(t, "yes", byName["MPTCP listeners"])
	}
}

// TestCheckInterfaceKeys runs check in a namespace with a VRF device: the
// interface-key row names it and says yes.
func TestCheckInterfaceKeys(t *testing.T) {
	requireMD5(t)
	testenv.Require(t, testenv.VRF)
	t.Parallel()
	testenv.Netns(t)
	ip := testenv.RequireTool(t, "ip", "iproute2")
	// Forked from this goroutine's thread, ip runs in its namespace.
	out, err := exec.Command(ip, "link", "add", "md5t-blue", "type", "vrf", "table", "10").CombinedOutput()
	require.NoError(t, err, "%s", out)

	r := run(t, "", nil, "check")
	require.Equal(t, 0, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	assert.Regexp(t, regexp.MustCompile(`(?m)^interface keys +ok +yes +.*VRF devices: md5t-blue$`), r.stdout)
}

// TestCheckFailsWhereTheKernelRefuses runs check under a seccomp filter
// that answers TCP_MD5SIG and TCP_MD5SIG_EXT with ENOPROTOOPT, what a
// kernel without CONFIG_TCP_MD5SIG or a sandbox such as gVisor answers.
func TestCheckFailsWhereTheKernelRefuses(t *testing.T) {
	t.Parallel()
	code, out := checkUnderSeccomp(t, "md5")
	require.Equal(t, 1, code, out)
	assert.Regexp(t, regexp.MustCompile(`(?m)^signing +FAIL +no +.*CONFIG_TCP_MD5SIG`), out)
	assert.Regexp(t, regexp.MustCompile(`(?m)^self-test +skip`), out)
	assert.Contains(t, out, "Signing does NOT work")
	// TTL security needs no TCP MD5.
	assert.Regexp(t, regexp.MustCompile(`(?m)^TTL security +ok +yes`), out)
}

// TestCheckWithoutTTLSecurity runs check under a seccomp filter that
// answers IP_MINTTL and IPV6_MINHOPCOUNT with ENOPROTOOPT: signing still
// works, so check succeeds, and warns that TTL security does not.
func TestCheckWithoutTTLSecurity(t *testing.T) {
	t.Parallel()
	code, out := checkUnderSeccomp(t, "ttl")
	require.Equal(t, 0, code, out)
	assert.Regexp(t, regexp.MustCompile(`(?m)^TTL security +warn +no +.*not supported.*setsockopt IP_MINTTL`), out)
	assert.Regexp(t, regexp.MustCompile(`(?m)^self-test: TTL security +skip +not run`), out)
	assert.Regexp(t, regexp.MustCompile(`(?m)^self-test: right key +ok +connects`), out)
	assert.NotContains(t, out, "FAIL")
	assert.Contains(t, out, "Signing works")
	assert.Contains(t, out, "TTL security (GTSM, RFC 5082) does NOT work here")
}

// checkUnderSeccomp runs check under the seccomp filter that block names
// and returns its exit code and stdout.
func checkUnderSeccomp(t *testing.T, block string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0]) // TestMain becomes the helper
	cmd.Env = append(os.Environ(), "TCPMD5_SECCOMP_EXEC="+binary, "TCPMD5_SECCOMP_BLOCK="+block)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if err != nil {
		require.ErrorAs(t, err, &ee)
		code = ee.ExitCode()
	}
	if code == seccompUnavailable {
		testenv.Missing(t, "cannot install a seccomp filter: "+stderr.String(), "run on a kernel with CONFIG_SECCOMP_FILTER, outside a sandbox that forbids it")
	}
	return code, "stdout:\n" + stdout.String() + "\nstderr:\n" + stderr.String()
}

func TestListenDialRoundTrip(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	// Each side holds the other's address with the same secret.
	file := keyFile(t, 0o600, ourAddr+" "+secretA+"\n"+peerAddr+" "+secretA+"\n")

	ln := startListen(t, "from the listener\n", "-key-file", file, peerAddr+":0")
	require.Contains(t, ln.line, " with 2 keys")
	addr := ln.addr

	// Not in subtests: the commands must start from this goroutine, the
	// one in the namespace.
	wrong := run(t, "", []string{"TCPMD5_SECRET=" + secretB}, "dial", "-source", ourAddr, "-timeout", "700ms", addr)
	assert.Equal(t, 1, wrong.code, "a dial with the wrong key: %s", wrong.stderr)
	assert.Contains(t, wrong.stderr, "holds the same key for")
	assert.Empty(t, wrong.stdout)

	// The listener holds no key for otherAddr: it resets the connection
	// and waits for the next one.
	unkeyed := run(t, "", nil, "dial", "-source", otherAddr, "-secret", secretA, "-timeout", "700ms", addr)
	assert.Equal(t, 1, unkeyed.code, "a signed dial from a peer the listener has no key for: %s", unkeyed.stderr)
	assert.Contains(t, unkeyed.stderr, "holds the same key for")

	r := run(t, "from the dialer\n", []string{"TCPMD5_SECRET=" + secretA}, "dial", "-source", ourAddr, addr)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Equal(t, "from the listener\n", r.stdout)
	assert.Contains(t, r.stderr, "connected to "+addr)

	ln.requireExit(t)
	assert.Equal(t, "from the dialer\n", ln.stdout.String())
}

// listenCmd is a running "tcpmd5 listen".
type listenCmd struct {
	cmd      *exec.Cmd
	stdout   bytes.Buffer
	stderr   io.Reader
	line     string   // its first line on stderr but warnings, "listening on ADDR ..."
	warnings []string // the warnings before it
	addr     string
}

// startListen runs "tcpmd5 listen" with args and stdin, from the calling
// goroutine's namespace, and waits for its "listening on ADDR" line, past
// any warnings.
func startListen(t *testing.T, stdin string, args ...string) *listenCmd {
	t.Helper()
	l := &listenCmd{cmd: exec.Command(binary, append([]string{"listen"}, args...)...)}
	l.cmd.Stdin = strings.NewReader(stdin)
	l.cmd.Stdout = &l.stdout
	var err error
	l.stderr, err = l.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, l.cmd.Start())
	t.Cleanup(func() { _ = l.cmd.Process.Kill(); _ = l.cmd.Wait() })
	lines := make(chan string, 1)
	r := bufio.NewReader(l.stderr)
	go func() {
		line, _ := r.ReadString('\n')
		for strings.HasPrefix(line, "tcpmd5: warning:") {
			l.warnings = append(l.warnings, line)
			line, _ = r.ReadString('\n')
		}
		lines <- line
	}()
	l.stderr = r
	select {
	case l.line = <-lines:
		requireNoSecret(t, l.line)
		m := regexp.MustCompile(`listening on (\S+) `).FindStringSubmatch(l.line)
		require.NotNil(t, m, "listen said %q", l.line)
		l.addr = m[1]
	case <-time.After(10 * time.Second):
		t.Fatal("listen did not start")
	}
	return l
}

// requireExit waits for the listen command to exit, cleanly, once its
// connection has ended.
func (l *listenCmd) requireExit(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	go func() { _, _ = io.Copy(io.Discard, l.stderr); done <- l.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("listen did not exit after the connection ended")
	}
}

func TestKeySources(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	probe := []string{"probe", "-source", ourAddr, "-timeout", "1s", "-wait", "100ms"}
	// peer starts a keyed peer in a namespace for the calling subtest.
	peer := func(t *testing.T) string {
		testenv.Netns(t)
		return listen(t, echo, key(t, ourAddr, secretA)).Addr().String()
	}
	t.Run("environment", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		r := run(t, "", []string{"TCPMD5_SECRET=" + secretA}, append(probe, addr)...)
		assert.Equal(t, 0, r.code, r.stderr)
		assert.NotContains(t, r.stderr, "warning")
	})
	t.Run("-secret warns", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		r := run(t, "", nil, append(probe, "-secret", secretA, addr)...)
		assert.Equal(t, 0, r.code, r.stderr)
		assert.Contains(t, r.stderr, "warning: -secret shows the secret in the process list")
	})
	t.Run("-key PEER=SECRET, as listen takes it", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		host, _, _ := net.SplitHostPort(addr)
		r := run(t, "", nil, append(probe, "-key", "192.0.2.0/24="+secretB, "-key", host+"/32="+secretA, addr)...)
		assert.Equal(t, 0, r.code, r.stderr)
		assert.Contains(t, r.stderr, "warning: -key shows the secret in the process list")
		r = run(t, "", nil, append(probe, "-key", "192.0.2.0/24="+secretA, addr)...)
		assert.Equal(t, 2, r.code, r.stderr)
		assert.Contains(t, r.stderr, "no key in -key covers "+host)
		r = run(t, "", nil, append(probe, "-key", secretA, addr)...)
		assert.Equal(t, 2, r.code, r.stderr)
		assert.Contains(t, r.stderr, "give -secret SECRET")
		requireNoSecret(t, r.stderr)
	})
	t.Run("key file open to others warns", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		file := keyFile(t, 0o644, peerAddr+" "+secretA+"\n")
		r := run(t, "", nil, append(probe, "-key-file", file, addr)...)
		assert.Equal(t, 0, r.code, r.stderr)
		assert.Contains(t, r.stderr, "warning: key file "+file+" is accessible by group or others (mode 0644)")
		assert.Contains(t, r.stderr, "chmod 600")
	})
	t.Run("key file takes the longest prefix", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		file := keyFile(t, 0o600, "127.0.0.0/8 "+secretB+"\n# the peer itself\n"+peerAddr+" "+secretA+"\n127.3.0.0/16 "+secretB+"\n")
		r := run(t, "", nil, append(probe, "-key-file", file, addr)...)
		assert.Equal(t, 0, r.code, r.stderr)
	})
	t.Run("no key for the host", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		file := keyFile(t, 0o600, "192.0.2.1 "+secretA+"\n")
		r := run(t, "", nil, append(probe, "-key-file", file, addr)...)
		assert.Equal(t, 2, r.code)
		assert.Contains(t, r.stderr, "no key in "+file+" covers "+peerAddr)
	})
	t.Run("no secret at all", func(t *testing.T) {
		t.Parallel()
		addr := peer(t)
		r := run(t, "", []string{"TCPMD5_SECRET="}, append(probe, addr)...)
		assert.Equal(t, 2, r.code)
		assert.Contains(t, r.stderr, "no secret")
	})
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	badFile := keyFile(t, 0o600, "192.0.2.1 "+secretA+"\n"+secretB+" 192.0.2.2\n")
	zoneFile := keyFile(t, 0o600, "fe80::1%"+secretB+" x\n")
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"no command", nil, 2, "Usage:"},
		{"unknown command", []string{"telnet"}, 2, `unknown command "telnet"`},
		{"help", []string{"help"}, 0, ""},
		{"probe -h has examples", []string{"probe", "-h"}, 0, "Examples:\n  tcpmd5 probe"},
		{"probe without target", []string{"probe", "-secret", secretA}, 2, "probe takes one HOST:PORT"},
		{"probe bad duration", []string{"probe", "-timeout", "soon", "192.0.2.1:179"}, 2, "invalid value"},
		{"probe unknown flag", []string{"probe", "-port", "179", "192.0.2.1:179"}, 2, "flag provided but not defined: -port"},
		{"probe zero timeout", []string{"probe", "-timeout", "0s", "-secret", secretA, "192.0.2.1:179"}, 2, "-timeout must be positive"},
		{"dial bad ttl-security", []string{"dial", "-ttl-security", "300", "-secret", secretA, "192.0.2.1:179"}, 2, "-ttl-security 300"},
		{"dial bad source", []string{"dial", "-source", "here", "-secret", secretA, "192.0.2.1:179"}, 2, `-source "here" is not an IP address`},
		{"probe bad source", []string{"probe", "-source", "here", "-secret", secretA, "192.0.2.1:179"}, 2, `-source "here" is not an IP address`},
		{"probe secret and key file", []string{"probe", "-secret", secretA, "-key-file", badFile, "192.0.2.1:179"}, 2, "not both"},
		{"check takes no arguments", []string{"check", "now"}, 2, "check takes no arguments"},
		{"listen without keys", []string{"listen", "127.3.0.1:0"}, 2, "no keys"},
		{"listen bad key flag", []string{"listen", "-key", secretA, "127.3.0.1:0"}, 2, "want PEER=SECRET"},
		{"listen bad peer", []string{"listen", "-key", "192.0.2.0/33=" + secretA, "127.3.0.1:0"}, 2, "is not an IP address or prefix"},
		{"key file with a bad line", []string{"dial", "-key-file", badFile, "192.0.2.1:179"}, 2, badFile + ":2: the first field is not an IP address"},
		{"dial without target", []string{"dial"}, 2, "dial takes one HOST:PORT"},
		// A secret in the wrong place is never printed: run checks.
		{"listen secret with padding for PEER=SECRET", []string{"listen", "-key", secretA + "==", "127.3.0.1:0"}, 2, "not shown"},
		{"dial secret among the AO words", []string{"dial", "-ao", "send=1 recv=2 alg=hmac(sha1) " + secretA, "-key", "127.0.0.2=x", "127.0.0.1:1"}, 2, "word 4 (not shown)"},
		{"key file zone holds the secret", []string{"dial", "-key-file", zoneFile, "192.0.2.1:179"}, 2, zoneFile + ":1: tcpmd5: peer fe80::1: the zone names no interface"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, "", nil, tt.args...)
			assert.Equal(t, tt.code, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			assert.Contains(t, r.stderr, tt.want)
		})
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	require.NoError(t, err)
	return string(b)
}

// TestDialPeerClosesFirst: a server that writes and closes, before or
// without reading what it was sent, as many do, ends the connection with a
// reset: dial still printed the whole reply and exits 0, the good session
// its help promises, and says on stderr that the peer ended it.
func TestDialPeerClosesFirst(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	for _, tc := range []struct {
		name  string
		stdin string
		wait  time.Duration
	}{
		{"echo", "hello\n", 0},
		{"unread", strings.Repeat("hello, who reads this?\n", 1000), 100 * time.Millisecond},
	} {
		ln := listen(t, func(c net.Conn) {
			_, _ = c.Write([]byte("bye\n"))
			time.Sleep(tc.wait) // what the dialer sent arrives, unread
			c.Close()
		}, testkit.Key(t, ourAddr, secretA))
		r := run(t, tc.stdin, []string{"TCPMD5_SECRET=" + secretA}, "dial", "-source", ourAddr, ln.Addr().String())
		assert.Equal(t, 0, r.code, "%s: stderr: %s", tc.name, r.stderr)
		assert.Equal(t, "bye\n", r.stdout, tc.name)
	}
}
