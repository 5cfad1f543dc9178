package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/tcplowlevel/tcpmd5/internal/probe"
)

const probeExamples = `  tcpmd5 probe -key-file /etc/tcpmd5.keys 192.0.2.1:179
  TCPMD5_SECRET=fake-secret-x tcpmd5 probe -source 192.0.2.2 192.0.2.1:179
  tcpmd5 probe -timeout 3s -json -key-file peers.keys [2001:db8::1]:179
  tcpmd5 probe -key 192.0.2.0/24=fake-secret-x 192.0.2.1:179  # -key as listen takes it
  tcpmd5 probe -ttl-security 1 -key-file peers.keys 192.0.2.1:179  # a peer with "ttl-security hops 1"
  TCPMD5_SECRET=fake-secret-x tcpmd5 probe -ao "send=2 recv=1 alg=hmac(sha1)" 192.0.2.1:179  # TCP-AO
`

func (e *env) probe(args []string) int {
	fs := e.flagSet("probe [-secret SECRET | -key PEER=SECRET... | -key-file FILE] [-ao PARAMS] [-source ADDR] [-ttl-security N] [-timeout D] [-wait D] [-json] HOST:PORT", probeExamples)
	var flags peerFlags
	flags.register(fs, "dial from this local `ADDR`ess (the address the peer holds our key for)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long each attempt waits for an answer")
	wait := fs.Duration("wait", 2*time.Second, "how long to listen for a connected peer to speak first")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	p, exit, ok := e.parsePeer("probe", fs, args, &flags, func() error {
		if *timeout <= 0 || *wait < 0 {
			return errors.New("-timeout must be positive and -wait not negative")
		}
		return nil
	})
	if !ok {
		return exit
	}
	r, err := probe.Run(context.Background(), probe.Config{
		Address:     p.target.AddrPort().String(),
		Keys:        p.keys.Keys,
		AOKeys:      p.keys.AOKeys,
		Source:      p.source,
		Timeout:     *timeout,
		Wait:        *wait,
		TTLSecurity: *flags.hops,
		Progress:    func(msg string) { fmt.Fprintf(e.stderr, "tcpmd5 probe: %s...\n", msg) },
	})
	if err != nil {
		return e.errorf(ExitNo, "%v", err)
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return e.errorf(ExitNo, "%v", err)
		}
	} else {
		printProbe(e, r)
	}
	if r.Verdict != probe.Signed {
		return ExitNo
	}
	return ExitOK
}

func printProbe(e *env, r probe.Result) {
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "target\t%s\n", r.Target)
	if r.Source != "" {
		fmt.Fprintf(tw, "source\t%s\n", r.Source)
	}
	if r.TTLSecurity != 0 {
		fmt.Fprintf(tw, "TTL security\t%d hops: we send with TTL 255 and drop answers with TTL below %d\n", r.TTLSecurity, 256-r.TTLSecurity)
	}
	fmt.Fprintf(tw, "verdict\t%s\n", r.Verdict)
	fmt.Fprintf(tw, "\t%s\n", r.Summary)
	if r.SignedError != "" {
		fmt.Fprintf(tw, "signed SYN\t%s\n", r.SignedError)
	}
	if r.Unsigned != "" {
		fmt.Fprintf(tw, "unsigned SYN\t%s\n", r.Unsigned)
	}
	if r.PeerOnThisHost {
		names := make([]string, 0, len(r.Counters))
		for n := range r.Counters {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) == 0 {
			fmt.Fprintf(tw, "counters\tthe peer is on this host; no signature or TTL drop counter moved\n")
		}
		for _, n := range names {
			fmt.Fprintf(tw, "counters\t%s +%d: %s\n", n, r.Counters[n], probe.CounterMeaning[n])
		}
		for _, p := range r.Drops {
			fmt.Fprintf(tw, "dropped\t%d [%s] from %s to %s: %s\n", p.Count, p.Flags, p.Remote, p.Local, p.Reason)
		}
		if r.DropsNote != "" {
			fmt.Fprintf(tw, "dropped\tunknown: %s\n", r.DropsNote)
		}
	}
	if g := r.Greeting; g != nil {
		switch {
		case g.BGP != nil:
			fmt.Fprintf(tw, "peer said\t%s\n", g.BGP)
		case g.Bytes > 0:
			fmt.Fprintf(tw, "peer said\t%d bytes: %q\n", g.Bytes, g.Text)
		default:
			fmt.Fprintf(tw, "peer said\tnothing\n")
		}
		if g.End != "" {
			fmt.Fprintf(tw, "connection\t%s by the peer\n", g.End)
		}
	}
	tw.Flush()
}
