// Package cli is the tcpmd5 command: flags, key sources and printing over
// the check, probe and tcpmd5 packages. The command's main only calls [Main].
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/keyfile"
)

// The command's exit codes.
const (
	ExitOK    = 0 // check: signing works; probe: the peer accepts our signature; listen, dial: done
	ExitNo    = 1 // check: signing does not work; probe: the peer does not accept it; listen, dial: failed
	ExitUsage = 2 // bad flags or arguments, unreadable key file, no key for the peer
)

// SecretEnv is the environment variable probe and dial take a secret from.
const SecretEnv = "TCPMD5_SECRET"

const usage = `tcpmd5: test TCP MD5 signatures (RFC 2385) as BGP peers use them.

Usage:
  tcpmd5 check [-json]
  tcpmd5 probe [-secret SECRET | -key PEER=SECRET... | -key-file FILE] [-ao PARAMS] [-source ADDR] [-ttl-security N] [-timeout D] [-wait D] [-json] HOST:PORT
  tcpmd5 listen [-k] [-key PEER=SECRET]... [-key-file FILE] [-ao PARAMS] [-allow-unsigned] [-ttl-security N] [-metrics ADDR] ADDR
  tcpmd5 dial [-secret SECRET | -key PEER=SECRET... | -key-file FILE] [-ao PARAMS] [-source ADDR] [-ttl-security N] [-timeout D] HOST:PORT
  tcpmd5 watch [-json] [-for D] [-port N] [-metrics ADDR]

Commands:
  check   can this host sign segments? kernel features, key limits, TTL
          security and a live loopback self-test
  probe   does the peer at HOST:PORT accept our signature? and if not, why
  listen  accept one signed connection (with -k, one after another), copy
          stdin to it and it to stdout, and show the segments the kernel
          drops on its port and why
  dial    make one signed connection, copy stdin to it and it to stdout
          (both end when stdin has ended and the peer has closed its side)
  watch   who fails our signatures: the segments the kernel drops for a
          missing or wrong signature, by peer and reason, live

Run "tcpmd5 COMMAND -h" for a command's flags and examples.

Secrets come from a key file (-key-file), from $TCPMD5_SECRET, or from
-key PEER=SECRET (every command) and -secret SECRET (probe and dial: the
target's secret), which show them in the process list. A key file holds one key a line,
"PEER SECRET", PEER an address or prefix. A # after blanks starts a comment;
a secret with blanks, # or " goes in double quotes (\" and \\ inside):

  # peer          secret                    comment
  192.0.2.1       fake-secret-router-1      # r1, AS 65001
  2001:db8::/64   "fake secret # fabric"
  192.0.2.2 ao send=1 recv=2 alg=hmac(sha1) fake-secret-router-2  # TCP-AO

A TCP-AO key (RFC 5925) has "ao" and its parameters before the secret:
send=N (the KeyID we sign with, the peer's RecvID), recv=N (the peer's
SendID), alg=NAME (hmac(sha1), cmac(aes128), hmac(sha256), ...), and
optionally mac=N (MAC bytes, default 12) and exclude-options. A secret that
looks like a parameter goes in quotes. -ao PARAMS makes the secrets of
-key, -secret or $TCPMD5_SECRET AO keys with those parameters.

Keys may take over from each other on a schedule, as routers' key chains
do: words before the secret give lifetimes, RFC 3339 times. from=TIME is an
MD5 key's start (a peer may have keys of several starts: the latest begun
signs); an AO key has from= and until=, or send-from=, send-until=,
accept-from= and accept-until=:

  192.0.2.1 from=2026-12-01T02:00:00Z fake-secret-router-1-new
  192.0.2.2 ao send=2 recv=2 alg=hmac(sha256) from=2026-12-01T02:00:00Z fake-secret-2-new

listen and dial apply them to the live listener and sessions as they come;
SIGHUP reloads the key file into them, and SIGUSR1 prints each session's keys.

Secrets are never printed.

-metrics ADDR on listen and watch serves Prometheus metrics at
http://ADDR/metrics: tcpmd5_dropped_segments_total{remote,local,reason},
tcpmd5_refused_connections_total{remote,local,reason} (listen),
tcpmd5_netstat_total{counter} (the kernel's TCPMD5* and TCPAO* counters),
tcpmd5_drop_events_lost_total and tcpmd5_drop_events_watched.

TTL security (GTSM, RFC 5082; "ttl-security hops N" on routers) is
-ttl-security N on probe, listen and dial: send with TTL 255 and drop every
segment that arrives from more than N hops away (TTL below 256-N), in
silence, as a wrong key is dropped. Both ends must have it; 0 is off.

Exit codes:
  0  check: signing works; probe: the peer accepts our signature;
     listen, dial: the connection ended (listen -k: interrupted); watch:
     the time was up, or interrupted
  1  check: signing does not work, or a self-test failed; probe: the peer
     does not accept our signature (the verdict says why); listen, dial:
     no connection; watch: neither drop events nor counters are readable
  2  bad flags or arguments, unreadable key file, no key for the peer
`

// Main runs the command with args (without the program name) and returns its
// exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	env := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	switch args[0] {
	case "check":
		return env.check(args[1:])
	case "probe":
		return env.probe(args[1:])
	case "listen":
		return env.listen(args[1:])
	case "dial":
		return env.dial(args[1:])
	case "watch":
		return env.watch(args[1:])
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	}
	fmt.Fprintf(stderr, "tcpmd5: unknown command %q\n\n%s", args[0], usage)
	return ExitUsage
}

type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

func (e *env) warnf(format string, args ...any) {
	fmt.Fprintf(e.stderr, "tcpmd5: warning: "+format+"\n", args...)
}

func (e *env) errorf(code int, format string, args ...any) int {
	msg := strings.TrimPrefix(fmt.Sprintf(format, args...), "tcpmd5: ") // the library's errors carry the prefix too
	fmt.Fprintln(e.stderr, "tcpmd5: "+msg)
	return code
}

// flagSet returns a flag set for the command whose -h prints synopsis,
// the flags and examples.
func (e *env) flagSet(synopsis, examples string) *flag.FlagSet {
	name, _, _ := strings.Cut(synopsis, " ")
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: tcpmd5 %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
		fmt.Fprintf(out, "\nExamples:\n%s", examples)
		fmt.Fprintf(out, "\nExit codes: 0 success, 1 the answer is no, 2 usage error (see tcpmd5 help).\n")
	}
	return fs
}

// parse parses args with flags and positional arguments in any order and
// returns the positional ones. -h prints help and returns flag.ErrHelp.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// parseExit is the exit code for an error of parse: 0 after -h.
func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitUsage
}

// peerFlags are the flags of dial and probe that say how to reach the
// peer: its keys, the address to dial it from and TTL security.
type peerFlags struct {
	keys   secretSource
	source string
	hops   *int
}

// register adds the flags to fs; source says what -source is for.
func (p *peerFlags) register(fs *flag.FlagSet, source string) {
	p.keys.register(fs)
	fs.StringVar(&p.source, "source", "", source)
	p.hops = ttlSecurityFlag(fs)
}

// peer is what dial and probe read off their command line: the peer's
// address, the address to dial it from (invalid: any) and its keys.
type peer struct {
	target *net.TCPAddr
	source netip.Addr
	keys   keyfile.File
}

// parsePeer parses args for verb, which takes the flags of fs (p's among
// them, and the verb's own, which check validates if not nil) and one
// HOST:PORT. Where args are wrong it says so and returns the exit code,
// with ok false.
func (e *env) parsePeer(verb string, fs *flag.FlagSet, args []string, p *peerFlags, check func() error) (r peer, exit int, ok bool) {
	pos, err := parse(fs, args)
	if err != nil {
		return peer{}, parseExit(err), false
	}
	err = checkTTLSecurity(*p.hops)
	if err == nil && len(pos) != 1 {
		fs.Usage()
		err = fmt.Errorf("%s takes one HOST:PORT, got %d arguments", verb, len(pos))
	}
	if err == nil && check != nil {
		err = check()
	}
	if err == nil {
		r.source, err = sourceAddr(p.source)
	}
	if err == nil {
		r.target, err = net.ResolveTCPAddr("tcp", pos[0])
	}
	if err == nil {
		r.keys, err = e.keysFor(p.keys, r.target.AddrPort().Addr())
	}
	if err != nil {
		return peer{}, e.errorf(ExitUsage, "%v", err), false
	}
	return r, ExitOK, true
}

// secretSource is the -secret SECRET, -key PEER=SECRET, -key-file FILE and
// -ao SPEC flags of probe and dial.
type secretSource struct {
	secret string
	keys   peerKeys
	file   string
	ao     string
}

func (s *secretSource) register(fs *flag.FlagSet) {
	fs.StringVar(&s.secret, "secret", "", "the `SECRET` shared with the peer (visible in the process list; prefer -key-file or $"+SecretEnv+")")
	keyFlag(fs, &s.keys)
	keyFileFlag(fs, &s.file)
	aoFlag(fs, &s.ao)
}

// keyFlag registers -key PEER=SECRET, the same on every command.
func keyFlag(fs *flag.FlagSet, p *peerKeys) {
	fs.Var(p, "key", "a key `PEER=SECRET`, PEER an address or prefix; repeat for more peers (visible in the process list; prefer -key-file)")
}

// keyFileFlag registers -key-file FILE, the same on every command.
func keyFileFlag(fs *flag.FlagSet, file *string) {
	fs.StringVar(file, "key-file", "", "read keys from `FILE`, one \"PEER SECRET\" or \"PEER ao send=N recv=N alg=NAME SECRET\" a line; a dial uses the keys whose PEER holds the host with the longest prefix")
}

// aoFlag registers -ao SPEC.
func aoFlag(fs *flag.FlagSet, spec *string) {
	fs.StringVar(spec, "ao", "", "sign with TCP-AO (RFC 5925) instead of MD5: the secrets of -secret, -key or $"+SecretEnv+" with these `PARAMS`, \"send=N recv=N alg=NAME\" and optionally mac=N and exclude-options, as in \"send=1 recv=2 alg=hmac(sha1)\"")
}

// keysFor returns the keys to dial host with: from the key file, from -key
// or -secret, or from the environment, in that order of precedence; with
// -ao, the secrets make AO keys.
func (e *env) keysFor(s secretSource, host netip.Addr) (keyfile.File, error) {
	host = host.Unmap().WithZone("")
	if s.keys.err != nil {
		return keyfile.File{}, fmt.Errorf("%w; for the peer's secret alone, give -secret SECRET", s.keys.err)
	}
	given := 0
	for _, set := range []bool{s.file != "", s.secret != "", len(s.keys.given) > 0} {
		if set {
			given++
		}
	}
	if given > 1 {
		return keyfile.File{}, errors.New("give one of -secret, -key and -key-file, not both")
	}
	var keys keyfile.File
	switch {
	case s.file != "":
		if s.ao != "" {
			return keyfile.File{}, errors.New("-ao goes with -secret, -key or $" + SecretEnv + "; a key file gives AO parameters on its lines")
		}
		var err error
		if keys, err = e.loadKeys(s.file); err != nil {
			return keyfile.File{}, err
		}
	case len(s.keys.given) > 0:
		e.warnf("-key shows the secret in the process list (ps, /proc); use -key-file or $%s", SecretEnv)
		var err error
		if keys, err = s.keys.keys(s.ao); err != nil {
			return keyfile.File{}, err
		}
	default:
		secret := s.secret
		if secret != "" {
			e.warnf("-secret shows the secret in the process list (ps, /proc); use -key-file or $%s", SecretEnv)
		} else {
			secret = os.Getenv(SecretEnv)
		}
		if secret == "" {
			return keyfile.File{}, fmt.Errorf("no secret: give -key-file FILE, set $%s, or give -secret SECRET", SecretEnv)
		}
		if s.ao != "" {
			k, err := tcpmd5.ParseAOKey(host.String(), s.ao, secret)
			if err != nil {
				return keyfile.File{}, fmt.Errorf("-ao: %w", err)
			}
			return keyfile.File{AOKeys: []tcpmd5.AOKey{k}}, nil
		}
		k, err := tcpmd5.ParseKey(host.String(), secret)
		if err != nil {
			return keyfile.File{}, err
		}
		return keyfile.File{Keys: []tcpmd5.Key{k}}, nil
	}
	found := keys.Lookup(host)
	if found.Len() == 0 {
		from := "-key"
		if s.file != "" {
			from = s.file
		}
		return keyfile.File{}, fmt.Errorf("no key in %s covers %s", from, host)
	}
	return found, nil
}

// loadKeys reads a key file and prints its permission warning.
func (e *env) loadKeys(path string) (keyfile.File, error) {
	keys, warning, err := keyfile.Load(path)
	if warning != "" {
		e.warnf("%s", warning)
	}
	return keys, err
}

// ttlSecurityFlag registers the -ttl-security N flag of probe, listen and
// dial.
func ttlSecurityFlag(fs *flag.FlagSet) *int {
	return fs.Int("ttl-security", 0, "TTL security (GTSM, RFC 5082): send with TTL 255 and drop segments from more than `N` hops away, as routers' \"ttl-security hops N\"; the peer must do the same (0: off)")
}

// checkTTLSecurity validates the -ttl-security flag.
func checkTTLSecurity(hops int) error {
	if hops < 0 || hops > tcpmd5.MaxTTLSecurity {
		return fmt.Errorf("-ttl-security %d: give 1 to %d hops, or 0 for off", hops, tcpmd5.MaxTTLSecurity)
	}
	return nil
}

// sourceAddr parses the -source flag.
func sourceAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("-source %q is not an IP address", s)
	}
	return a, nil
}
