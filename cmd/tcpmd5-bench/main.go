// Command tcpmd5-bench measures, in one run and interleaved, plain TCP, TCP
// with RFC 2385 MD5 signatures through tcpmd5, and TCP with MD5 set by hand
// through golang.org/x/sys (the baseline), over loopback (127.6.0.0/16):
// connection set-up rate and latency, bulk throughput over one and eight
// connections, the cost of SetKey at 10, 100 and 900 installed keys, and the
// accept rate against the keys on a listening socket. Beside them it
// measures crypto/md5 on one core, the bound hashing puts on signed
// throughput.
//
// It prints a table, or the report as JSON with -json, and exits with status
// 0 if tcpmd5 met its targets, 1 if it did not, 2 if it could not measure:
// set-up within 2% of the baseline, throughput within 3%, SetKey at 900 keys
// within 2x of SetKey at 10.
//
// Usage:
//
//	go run ./cmd/tcpmd5-bench [-quick] [-rounds N] [-json] [-o report.json]
//
// It needs Linux with CONFIG_TCP_MD5SIG; elsewhere it says it is not
// supported here.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	quick := flag.Bool("quick", false, "a short run that shows the program works (numbers not worth quoting)")
	rounds := flag.Int("rounds", 0, "interleaved rounds (default 5, or 2 with -quick)")
	asJSON := flag.Bool("json", false, "print the report as JSON instead of a table")
	out := flag.String("o", "", "also write the JSON report to this file (input of tools/benchcharts)")
	quiet := flag.Bool("q", false, "no progress lines on stderr")
	flag.Parse()

	cfg := bench.DefaultConfig()
	if *quick {
		cfg = bench.QuickConfig()
	}
	if *rounds > 0 {
		cfg.Rounds = *rounds
	}
	if tcpmd5.AOSupported() { // TCP-AO beside MD5, with its own baseline
		cfg.Variants = append(cfg.Variants, bench.AOVariantNames...)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	progress := os.Stderr
	if *quiet {
		progress = nil
	}
	r, err := bench.Run(ctx, cfg, progress)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpmd5-bench:", err)
		if errors.Is(err, tcpmd5.ErrMD5Unsupported) {
			fmt.Fprintln(os.Stderr, "tcpmd5-bench: not supported here: the measurements need Linux with CONFIG_TCP_MD5SIG")
		}
		return 2
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpmd5-bench:", err)
		return 2
	}
	js = append(js, '\n')
	if *out != "" {
		if err := os.WriteFile(*out, js, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "tcpmd5-bench:", err)
			return 2
		}
	}
	if *asJSON {
		os.Stdout.Write(js)
	} else if err := r.WriteTable(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tcpmd5-bench:", err)
		return 2
	}
	if !r.OK() {
		fmt.Fprintln(os.Stderr, "tcpmd5-bench: targets not met:", r.Failed())
		return 1
	}
	return 0
}
