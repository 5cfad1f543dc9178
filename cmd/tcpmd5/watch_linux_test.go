package main_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
	"github.com/tcplowlevel/tcpmd5/internal/testnet"
)

// background is a command running in the background whose output the test
// reads as it comes.
type background struct {
	cmd            *exec.Cmd
	mu             sync.Mutex
	stdout, stderr []string
	done           chan struct{}
}

// start runs the command argv from the calling goroutine's namespace.
func start(t *testing.T, argv ...string) *background {
	t.Helper()
	b := &background{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	out, err := b.cmd.StdoutPipe()
	require.NoError(t, err)
	errPipe, err := b.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, b.cmd.Start())
	var wg sync.WaitGroup
	for _, p := range []struct {
		sc   *bufio.Scanner
		into *[]string
	}{{bufio.NewScanner(out), &b.stdout}, {bufio.NewScanner(errPipe), &b.stderr}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p.sc.Scan() {
				b.mu.Lock()
				*p.into = append(*p.into, p.sc.Text())
				b.mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(b.done) }()
	t.Cleanup(func() { _ = b.cmd.Process.Kill(); <-b.done; _ = b.cmd.Wait() })
	return b
}

// waitFor waits until cond holds on the output so far, or fails t.
func (b *background) waitFor(t *testing.T, what string, cond func(stdout, stderr []string) bool) {
	t.Helper()
	deadline := time.Now().Add(testkit.MustConnect)
	for time.Now().Before(deadline) {
		b.mu.Lock()
		ok := cond(b.stdout, b.stderr)
		b.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t.Fatalf("no %s; stdout:\n%s\nstderr:\n%s", what, strings.Join(b.stdout, "\n"), strings.Join(b.stderr, "\n"))
}

// output returns what the command printed so far, stdout then stderr.
func (b *background) output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.stdout, "\n") + "\n" + strings.Join(b.stderr, "\n")
}

// exit interrupts the command and returns its exit code.
func (b *background) exit(t *testing.T) int {
	t.Helper()
	require.NoError(t, b.cmd.Process.Signal(syscall.SIGINT))
	<-b.done
	err := b.cmd.Wait()
	var ee *exec.ExitError
	if err != nil {
		require.ErrorAs(t, err, &ee)
	}
	return b.cmd.ProcessState.ExitCode()
}

// TestWatch runs "tcpmd5 watch -json" while a peer signs with the wrong
// secret, and requires a line naming that peer, the listener and the
// reason, with as many drops as TCPMD5Failure moved. Without CAP_PERFMON
// (or without the kernel's drop events) watch falls back to the counters:
// the same count, the peer null.
func TestWatch(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	events, _, _ := testenv.Has(testenv.Tracepoints)
	for _, mode := range []string{"events", "counters"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			if mode == "events" {
				testenv.Require(t, testenv.Tracepoints)
			}
			testenv.Netns(t)
			ln := listen(t, echo, key(t, ourAddr, secretA))
			port := ln.Addr().(*net.TCPAddr).Port
			argv := []string{binary, "watch", "-json", "-port", strconv.Itoa(port)}
			if mode == "counters" && events {
				// Without any capability, root included, the events are
				// out of reach.
				argv = testenv.WithoutCaps(t, argv...)
			}
			w := start(t, argv...)
			ready := "watching segments dropped for their signature on port " + strconv.Itoa(port)
			if mode == "counters" {
				ready = "watching the drop counters of this network namespace"
			}
			w.waitFor(t, "ready line", func(_, stderr []string) bool { return contains(stderr, ready) })
			if mode == "counters" {
				w.waitFor(t, "why", func(_, stderr []string) bool {
					return contains(stderr, "falling back to the kernel's drop counters: the peer is unknown")
				})
			}

			before := testkit.Counters(t)
			d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{key(t, peerAddr, secretB)}}
			d.Timeout = 700 * time.Millisecond
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ourAddr)}
			_, err := d.Dial("tcp4", ln.Addr().String())
			require.Error(t, err)
			moved := before.Delta(testkit.Counters(t), netstat.MD5Failure)[netstat.MD5Failure]
			require.Positive(t, moved)

			var last dropJSON
			w.waitFor(t, "JSON line counting every drop", func(stdout, _ []string) bool {
				for _, l := range stdout {
					require.NoError(t, json.Unmarshal([]byte(l), &last), l)
				}
				return last.Count == moved
			})
			assert.Equal(t, 0, w.exit(t))
			assert.Equal(t, "md5-mismatch", last.Reason)
			assert.WithinDuration(t, time.Now(), last.Time, time.Minute)
			if mode == "events" {
				assert.Equal(t, ourAddr, strings.Split(last.Remote, ":")[0])
				assert.Equal(t, ln.Addr().String(), last.Local)
				assert.Equal(t, "S", last.Flags)
			} else {
				assert.Empty(t, last.Remote)
				assert.Empty(t, last.Local)
				assert.Empty(t, last.Flags)
				assert.Contains(t, strings.Join(w.stdout, "\n"), `"remote":null`)
			}
			requireNoSecret(t, w.output())
		})
	}
}

// TestWatchFor: -for ends watch by itself, with exit status 0 and, on a
// pipe, the table once.
func TestWatchFor(t *testing.T) {
	t.Parallel()
	testenv.Netns(t)
	r := run(t, "", nil, "watch", "-for", "300ms")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "PEER")
	assert.Contains(t, r.stdout, "(no segment dropped for its signature so far)")
	r = run(t, "", nil, "watch", "-port", "70000")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "-port takes 0 to 65535")
	r = run(t, "", nil, "listen", "-h")
	assert.Equal(t, 0, r.code)
	assert.Contains(t, r.stderr, "Without -k, listen accepts one connection, stops listening, and exits")
	assert.Contains(t, r.stderr, "-k\tkeep listening after a connection ends")
}

// TestListenShowsDropsAndKeeps: listen -k says why a peer with the wrong
// secret cannot connect, then serves one good connection after another.
func TestListenShowsDropsAndKeeps(t *testing.T) {
	requireMD5(t)
	t.Parallel()
	testenv.Netns(t)
	file := keyFile(t, 0o600, ourAddr+" "+secretA+"\n")
	ln := startListen(t, "", "-k", "-key-file", file, peerAddr+":0")
	lines := bufio.NewScanner(ln.stderr)
	var mu sync.Mutex
	var stderr []string
	go func() {
		for lines.Scan() {
			mu.Lock()
			stderr = append(stderr, lines.Text())
			mu.Unlock()
		}
	}()
	has := func(s string) bool { mu.Lock(); defer mu.Unlock(); return contains(stderr, s) }

	wrong := run(t, "", []string{"TCPMD5_SECRET=" + secretB}, "dial", "-source", ourAddr, "-timeout", "700ms", ln.addr)
	assert.Equal(t, 1, wrong.code)
	if ok, _, _ := testenv.Has(testenv.Tracepoints); ok {
		want := "from " + ourAddr + ":"
		deadline := time.Now().Add(testkit.MustConnect)
		for !(has(want) && has("md5-mismatch: the peer signed with another secret")) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		assert.True(t, has("to "+ln.addr+": md5-mismatch: the peer signed with another secret than our key for it (1 so far)"), "listen did not say why: %q", stderr)
	} else {
		assert.True(t, contains(ln.warnings, "cannot show the segments the kernel drops"), "listen did not say it cannot show drops: %q", ln.warnings)
	}
	for i := range 3 {
		r := run(t, "hello "+strconv.Itoa(i)+"\n", []string{"TCPMD5_SECRET=" + secretA}, "dial", "-source", ourAddr, ln.addr)
		require.Equal(t, 0, r.code, "connection %d: %s", i, r.stderr)
	}
	// A peer no key covers connects unsigned, and listen says why it reset it.
	stranger := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.99")}, Timeout: testkit.MustConnect}
	if c, err := stranger.Dial("tcp", ln.addr); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(testkit.MustConnect))
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	deadline := time.Now().Add(testkit.MustConnect)
	for !has("refused [no-key] from 127.0.0.99:") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.True(t, has("refused [no-key] from 127.0.0.99:"), "listen did not name the refused peer: %q", stderr)
	assert.True(t, has("we hold no key for it"), "%q", stderr)
	assert.Equal(t, 0, exitListen(t, ln))
	assert.Equal(t, "hello 0\nhello 1\nhello 2\n", ln.stdout.String())
	assert.True(t, has("connection from "+ourAddr), "%q", stderr)
}

// exitListen interrupts a listen -k and returns its exit code.
func exitListen(t *testing.T, l *listenCmd) int {
	t.Helper()
	require.NoError(t, l.cmd.Process.Signal(syscall.SIGINT))
	err := l.cmd.Wait()
	var ee *exec.ExitError
	if err != nil {
		require.ErrorAs(t, err, &ee)
	}
	return l.cmd.ProcessState.ExitCode()
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// TestListenBoundsDropLines: listen keeps a line for at most 4,096 peers;
// the drops of a flood from more sources are counted together, so that
// its memory does not grow with the sources an attacker spoofs.
func TestListenBoundsDropLines(t *testing.T) {
	requireMD5(t)
	testenv.Require(t, testenv.Tracepoints)
	t.Parallel()
	testenv.Netns(t)
	ln := startListen(t, "", "-k", "-key", "127.3.0.0/16="+secretA, peerAddr+":0")
	var mu sync.Mutex
	var lines, others int
	go func() {
		sc := bufio.NewScanner(ln.stderr)
		for sc.Scan() {
			mu.Lock()
			switch {
			case strings.Contains(sc.Text(), "beyond the first 4096"):
				others++
			case strings.Contains(sc.Text(), "dropped ["):
				lines++
			}
			mu.Unlock()
		}
	}()
	raw, err := testnet.NewRawSocket()
	require.NoError(t, err)
	defer raw.Close()
	dst := netip.MustParseAddrPort(ln.addr)
	const sources = 4200
	for i := range sources {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 3, byte(1 + i/250), byte(1 + i%250)}), 40000)
		opt := []byte{19, 18, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1, 1} // a signature no key made
		require.NoError(t, raw.Send(testnet.Segment{Src: src, Dst: dst, Seq: uint32(i), Flags: testnet.SYN, Window: 64240, RawOptions: opt}))
	}
	done := func() bool { mu.Lock(); defer mu.Unlock(); return lines >= 4096 && others > 0 }
	for deadline := time.Now().Add(testkit.MustConnect); !done() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	assert.Equal(t, 0, exitListen(t, ln))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 4096, lines, "one line for each of the first 4,096 peers")
	assert.Positive(t, others, "the drops of the peers beyond them, counted together")
}
