package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/tcplowlevel/tcpmd5/internal/check"
)

const checkExamples = `  tcpmd5 check              # a table: can this host sign segments?
  tcpmd5 check -json | jq .signing
  tcpmd5 check -json | jq .ttl_security
  tcpmd5 check -json | jq .tcp_ao
`

func (e *env) check(args []string) int {
	fs := e.flagSet("check [-json]", checkExamples)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return parseExit(err)
	}
	if len(pos) > 0 {
		fs.Usage()
		return e.errorf(ExitUsage, "check takes no arguments, got %q", pos)
	}
	r := check.Run(context.Background(), check.Options{})
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return e.errorf(ExitNo, "%v", err)
		}
	} else {
		fmt.Fprintln(e.stdout, "TCP MD5 signatures (RFC 2385) on this host")
		fmt.Fprintln(e.stdout)
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "CHECK\tSTATUS\tRESULT\tDETAIL")
		for _, res := range r.Results {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.Check, res.Status, res.Value, res.Detail)
		}
		tw.Flush()
		fmt.Fprintln(e.stdout)
		if r.Signing {
			fmt.Fprintln(e.stdout, "Signing works: keyed sockets sign and verify every segment.")
		} else {
			fmt.Fprintln(e.stdout, "Signing does NOT work on this host: see the FAIL lines above.")
		}
		if r.TCPAO {
			fmt.Fprintln(e.stdout, "TCP-AO (RFC 5925) works: AO keys sign and verify every segment.")
		} else {
			fmt.Fprintln(e.stdout, "TCP-AO (RFC 5925) is not available here (see the TCP-AO lines above).")
		}
		if r.TTLSecurity {
			fmt.Fprintln(e.stdout, "TTL security (GTSM, RFC 5082) works: -ttl-security drops segments from too far away.")
		} else {
			fmt.Fprintln(e.stdout, "TTL security (GTSM, RFC 5082) does NOT work here: -ttl-security will fail (see the TTL security lines above).")
		}
	}
	if !r.OK() {
		return ExitNo
	}
	return ExitOK
}
