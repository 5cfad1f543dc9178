package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/drops"
	"github.com/tcplowlevel/tcpmd5/internal/tally"
	"github.com/tcplowlevel/tcpmd5/keyfile"
	"github.com/tcplowlevel/tcpmd5/metrics"
)

const listenExamples = `  tcpmd5 listen -key-file peers.keys :1790
  tcpmd5 listen -key 192.0.2.2=fake-secret-x 192.0.2.1:1790
  tcpmd5 listen -key 192.0.2.0/24=fake-secret-x -key 2001:db8::/64=fake-secret-y [::]:1790
  tcpmd5 listen -ttl-security 1 -key-file peers.keys 192.0.2.1:1790  # peers 1 hop away only
  tcpmd5 listen -k -key-file peers.keys :179  # stay up while a router probes, again and again
  tcpmd5 listen -ao "send=1 recv=2 alg=hmac(sha1)" -key 192.0.2.2=fake-secret-x :1790  # TCP-AO
  tcpmd5 listen -k -metrics 127.0.0.1:9179 -key-file peers.keys :179  # refusals and drops for Prometheus
  systemd-socket-activate -l :1790 tcpmd5 listen -k -key-file peers.keys systemd  # a socket systemd passed

ADDR is an address to listen on, "systemd" for the first socket systemd
passed (LISTEN_FDS), or "fd:N" for an inherited listening socket N: its keys
go on before listen accepts from it, with the same Accept policy. A signed
SYN never completes to a socket without its key, so a socket activated on
its first connection is never activated by a signed peer: start the service
with its socket.

Without -k, listen accepts one connection, stops listening, and exits when
that connection has ended. With -k it accepts one connection after another
until interrupted, copying each to stdout; stdin is not read. Either way it
prints, for its port, the segments the kernel drops for a missing or wrong
signature, with the peer and the reason (where the kernel reports them:
Linux 6.11+, as root or with CAP_PERFMON).
`

const dialExamples = `  tcpmd5 dial -key-file peers.keys 192.0.2.1:1790 < request.txt
  TCPMD5_SECRET=fake-secret-x tcpmd5 dial -source 192.0.2.2 192.0.2.1:1790
  tcpmd5 dial -ttl-security 1 -key-file peers.keys 192.0.2.1:1790  # a peer 1 hop away
  TCPMD5_SECRET=fake-secret-x tcpmd5 dial -ao "send=2 recv=1 alg=hmac(sha1)" 192.0.2.1:1790  # TCP-AO
`

// peerKeys is the repeatable -key PEER=SECRET flag of listen. Set keeps
// its error for later and returns nil, because the flag package would
// print the value, secret included, with the error.
type peerKeys struct {
	given [][2]string // peer, secret
	err   error
}

func (p *peerKeys) String() string { return "" }

func (p *peerKeys) Set(s string) error {
	peer, secret, ok := strings.Cut(s, "=")
	if !ok {
		p.err = cmp.Or(p.err, errors.New("-key: want PEER=SECRET, such as 192.0.2.1=SECRET or 2001:db8::/64=SECRET"))
		return nil
	}
	p.given = append(p.given, [2]string{peer, secret})
	return nil
}

// keys returns the -key flags as MD5 keys, or as AO keys with the
// parameters of -ao.
func (p *peerKeys) keys(ao string) (keyfile.File, error) {
	var f keyfile.File
	for _, g := range p.given {
		if ao != "" {
			k, err := tcpmd5.ParseAOKey(g[0], ao, g[1])
			if err != nil {
				return keyfile.File{}, fmt.Errorf("-key with -ao: %w", err)
			}
			f.AOKeys = append(f.AOKeys, k)
			continue
		}
		k, err := tcpmd5.ParseKey(g[0], g[1])
		if err != nil {
			return keyfile.File{}, fmt.Errorf("-key: %w", err)
		}
		f.Keys = append(f.Keys, k)
	}
	return f, nil
}

func (e *env) listen(args []string) int {
	fs := e.flagSet("listen [-k] [-key PEER=SECRET]... [-key-file FILE] [-ao PARAMS] [-allow-unsigned] [-ttl-security N] [-metrics ADDR] ADDR", listenExamples)
	keep := fs.Bool("k", false, "keep listening after a connection ends and accept the next, until interrupted (as nc -lk); stdin is not read")
	var flags peerKeys
	keyFlag(fs, &flags)
	var file string
	keyFileFlag(fs, &file)
	var ao string
	aoFlag(fs, &ao)
	allow := fs.Bool("allow-unsigned", false, "accept peers no key covers, unsigned (default: reset them)")
	hops := ttlSecurityFlag(fs)
	metricsAddr := metricsFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return parseExit(err)
	}
	if flags.err != nil {
		return e.errorf(ExitUsage, "%v", flags.err)
	}
	if err := checkTTLSecurity(*hops); err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	keys, err := flags.keys(ao)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	flagKeys := keys // a reload keeps them beside the file's
	if len(pos) != 1 {
		fs.Usage()
		return e.errorf(ExitUsage, "listen takes one ADDR such as :1790 or 192.0.2.1:1790, got %d arguments", len(pos))
	}
	if keys.Len() > 0 {
		e.warnf("-key shows the secret in the process list (ps, /proc); use -key-file")
	}
	if file != "" {
		fk, err := e.loadKeys(file)
		if err != nil {
			return e.errorf(ExitUsage, "%v", err)
		}
		keys = merged(keys, fk)
	}
	if keys.Len() == 0 && !*allow {
		return e.errorf(ExitUsage, "no keys: give -key PEER=SECRET or -key-file FILE")
	}
	var set metrics.Set
	stopMetrics, err := e.serveMetrics("listen", *metricsAddr, &set)
	if err != nil {
		return e.errorf(ExitUsage, "-metrics: %v", err)
	}
	defer stopMetrics()
	chain, err := newKeyChain("listen", keys)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	if file != "" {
		stopReload := e.reloadOnHangup(chain, func() (keyfile.File, error) {
			fk, err := e.loadKeys(file)
			return merged(flagKeys, fk), err
		})
		defer stopReload()
	}
	lc := tcpmd5.ListenConfig{KeyChain: chain.KeyChain, AllowUnsigned: *allow, TTLSecurity: *hops}
	lc.OnRefuse = func(r tcpmd5.Refusal) {
		set.Refused(r)
		fmt.Fprintf(e.stderr, "tcpmd5 listen: refused [%s] from %s to %s: %s\n", r.Reason, r.Remote, r.Local, tally.RefusalMeaning(r.Reason))
	}
	ln, err := listenOn(&lc, pos[0])
	if err != nil {
		return e.errorf(ExitNo, "%v", err)
	}
	defer ln.Close()
	// Watching starts before the line that says the port is ready, so
	// that no drop on it goes unseen.
	stopDrops := e.showDrops(uint16(ln.Addr().(*net.TCPAddr).Port), &set)
	defer stopDrops()
	fmt.Fprintf(e.stderr, "tcpmd5 listen: listening on %s with %d keys%s\n", ln.Addr(), keys.Len(), ttlNote(*hops))
	if !*keep {
		c, err := ln.AcceptTCP()
		if err != nil {
			return e.errorf(ExitNo, "%v", err)
		}
		ln.Close()
		fmt.Fprintf(e.stderr, "tcpmd5 listen: connection from %s\n", c.RemoteAddr())
		return e.pipe(c)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() != nil {
				return ExitOK
			}
			return e.errorf(ExitNo, "%v", err)
		}
		fmt.Fprintf(e.stderr, "tcpmd5 listen: connection from %s\n", c.RemoteAddr())
		_, err = io.Copy(e.stdout, c)
		c.Close()
		if err != nil {
			fmt.Fprintf(e.stderr, "tcpmd5 listen: connection from %s: %v\n", c.RemoteAddr(), err)
		} else {
			fmt.Fprintf(e.stderr, "tcpmd5 listen: connection from %s ended\n", c.RemoteAddr())
		}
	}
}

// merged returns the keys of a and of b, with their lifetimes.
func merged(a, b keyfile.File) keyfile.File {
	var out keyfile.File
	for _, f := range []keyfile.File{a, b} {
		for i, k := range f.Keys {
			out.Keys, out.Starts = append(out.Keys, k), append(out.Starts, f.Start(i))
		}
		for i, k := range f.AOKeys {
			out.AOKeys, out.Lifetimes = append(out.AOKeys, k), append(out.Lifetimes, f.Lifetime(i))
		}
	}
	return out
}

// listenOn listens with lc on addr: an address, "systemd" for the first
// socket systemd passed (LISTEN_FDS), or "fd:N" for descriptor N, a
// listening socket this process inherited.
func listenOn(lc *tcpmd5.ListenConfig, addr string) (*tcpmd5.Listener, error) {
	var f *os.File
	switch n, isFD := strings.CutPrefix(addr, "fd:"); {
	case addr == "systemd":
		pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
		if pid != strconv.Itoa(os.Getpid()) || fds == "" || fds == "0" {
			return nil, errors.New("listen systemd: no socket from systemd (LISTEN_PID and LISTEN_FDS name none for this process)")
		}
		os.Unsetenv("LISTEN_PID") // as sd_listen_fds(1): children do not take them for theirs
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
		f = os.NewFile(3, "systemd socket 3") // SD_LISTEN_FDS_START
	case isFD:
		fd, err := strconv.Atoi(n)
		if err != nil || fd < 0 {
			return nil, fmt.Errorf("listen %s: want fd:N, N a descriptor number", addr)
		}
		f = os.NewFile(uintptr(fd), "inherited socket "+n)
	default:
		return lc.Listen(context.Background(), "tcp", addr)
	}
	defer f.Close() // the Listener holds its own descriptor
	return lc.FileListener(f)
}

// dropRepeat is how often listen repeats a line about one peer's drops.
const dropRepeat = 5 * time.Second

// showDrops prints, until stop is called, the segments the kernel drops on
// port for their signature: the first from each peer for each reason at
// once, then its count at most every dropRepeat; and counts them in set.
func (e *env) showDrops(port uint16, set *metrics.Set) (stop func()) {
	const maxDropLines = 4096 // as many as a DropTally keeps
	w, err := drops.Watch(drops.Filter{Port: port})
	if err != nil {
		e.warnf("cannot show the segments the kernel drops for their signature: %v", err)
		return func() {}
	}
	untrack := set.Track(w)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		type line struct {
			count   uint64
			printed time.Time
		}
		seen := make(map[string]*line) // at most maxDropLines; the rest share others
		var others line
		for {
			ds, err := w.Read(ctx)
			if err != nil {
				return
			}
			for _, d := range ds {
				set.Drop(d)
				k := d.Remote.Addr().String() + " " + string(d.Reason)
				l := seen[k]
				if l == nil && len(seen) >= maxDropLines {
					others.count++
					if others.count == 1 || d.Time.Sub(others.printed) >= dropRepeat {
						others.printed = d.Time
						fmt.Fprintf(e.stderr, "tcpmd5 listen: dropped %d segments from peers beyond the first %d, not told apart (%s, the latest, from %s)\n", others.count, maxDropLines, d.Reason, d.Remote)
					}
					continue
				}
				if l == nil {
					l = &line{}
					seen[k] = l
				}
				l.count++
				if l.count == 1 || d.Time.Sub(l.printed) >= dropRepeat {
					l.printed = d.Time
					fmt.Fprintf(e.stderr, "tcpmd5 listen: dropped [%s] from %s to %s: %s: %s (%d so far)\n", d.Flags, d.Remote, d.Local, d.Reason, tally.Meaning(d.Reason), l.count)
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
		untrack()
		w.Close()
	}
}

func (e *env) dial(args []string) int {
	fs := e.flagSet("dial [-secret SECRET | -key PEER=SECRET... | -key-file FILE] [-ao PARAMS] [-source ADDR] [-ttl-security N] [-timeout D] HOST:PORT", dialExamples)
	var flags peerFlags
	flags.register(fs, "dial from this local `ADDR`ess")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the connection")
	p, exit, ok := e.parsePeer("dial", fs, args, &flags, nil)
	if !ok {
		return exit
	}
	hops := flags.hops
	chain, err := newKeyChain("dial", p.keys)
	if err != nil {
		return e.errorf(ExitUsage, "%v", err)
	}
	if flags.keys.file != "" {
		host := p.target.AddrPort().Addr().Unmap()
		stopReload := e.reloadOnHangup(chain, func() (keyfile.File, error) {
			fk, err := e.loadKeys(flags.keys.file)
			return fk.Lookup(host), err
		})
		defer stopReload()
	}
	d := tcpmd5.Dialer{KeyChain: chain.KeyChain, TTLSecurity: *hops}
	d.Timeout = *timeout
	if p.source.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: p.source.AsSlice()}
	}
	c, err := d.Dial("tcp", p.target.String())
	if err != nil {
		var ne net.Error
		if *hops == 0 && errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("%w; or the peer has TTL security on: dial with -ttl-security N (probe tells which)", err)
		}
		return e.errorf(ExitNo, "%v", err)
	}
	fmt.Fprintf(e.stderr, "tcpmd5 dial: connected to %s from %s%s\n", c.RemoteAddr(), c.LocalAddr(), ttlNote(*hops))
	return e.pipe(c.(*net.TCPConn))
}

// ttlNote is the end of a progress line that says the TTL security in use.
func ttlNote(hops int) string {
	switch hops {
	case 0:
		return ""
	case 1:
		return ", TTL security of 1 hop"
	}
	return fmt.Sprintf(", TTL security of %d hops", hops)
}

// pipe copies stdin to c and c to stdout, half-closing c when stdin ends,
// and returns when both directions have ended: stdin at its end and the
// peer's side closed.
func (e *env) pipe(c *net.TCPConn) int {
	defer c.Close()
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, e.stdin)
		if err == nil {
			err = c.CloseWrite()
		}
		sent <- err
	}()
	_, rerr := io.Copy(e.stdout, c)
	serr := <-sent
	// The connection was made and signed: a peer that ends it, with a
	// reset or before it read what we sent, ends a good session, which
	// exits 0; that it ended so is said on stderr.
	ended := func(err error) bool {
		return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
	}
	if err := cmp.Or(rerr, serr); err != nil && !(ended(rerr) || rerr == nil && ended(serr)) {
		return e.errorf(ExitNo, "%v", err)
	} else if err != nil {
		fmt.Fprintf(e.stderr, "tcpmd5: the peer ended the connection first: %v\n", err)
	}
	return ExitOK
}
