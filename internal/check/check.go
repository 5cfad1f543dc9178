// Package check examines this host's TCP MD5 (RFC 2385) support with nothing
// configured: whether the kernel signs segments and why not, which key kinds
// it takes, how many keys fit on one socket, whether Go listeners default to
// MPTCP, and a live self-test over loopback with the tcpmd5 package itself.
package check

import (
	"context"
	"time"
)

// Status grades one result.
type Status string

// The grades of a result. Only StatusFail makes the report fail.
const (
	StatusOK   Status = "ok"
	StatusFail Status = "FAIL"
	StatusInfo Status = "info"
	StatusWarn Status = "warn"
	StatusSkip Status = "skip"
)

// Result is one line of the report.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Value  string `json:"value"`
	Detail string `json:"detail,omitempty"`
}

// Report is the outcome of [Run].
type Report struct {
	// Signing reports that the kernel signs segments and the self-test
	// saw every verdict it expected.
	Signing bool     `json:"signing"`
	Results []Result `json:"results"`
}

// Options tune [Run].
type Options struct {
	// Refusal is how long a self-test dial waits before it calls the
	// peer silent, the only sign of a refused signature; 0 means 700ms,
	// before the kernel's first SYN retransmission at 1s.
	Refusal time.Duration
}

// Run examines the host and returns the report.
func Run(ctx context.Context, opts Options) Report {
	if opts.Refusal <= 0 {
		opts.Refusal = 700 * time.Millisecond
	}
	results, signing := host()
	if signing {
		results = append(results, selfTest(ctx, opts.Refusal)...)
	} else {
		results = append(results, Result{Check: "self-test", Status: StatusSkip, Value: "not run", Detail: "the kernel does not sign segments"})
	}
	r := Report{Signing: signing, Results: results}
	for _, res := range results {
		if res.Status == StatusFail {
			r.Signing = false
		}
	}
	return r
}
