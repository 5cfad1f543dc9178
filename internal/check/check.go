// Package check examines this host's TCP MD5 (RFC 2385) support with nothing
// configured: whether the kernel signs segments and why not, which key kinds
// it takes, how many keys fit on one socket, whether Go listeners default to
// MPTCP, whether sockets can drop segments by TTL (RFC 5082 GTSM), and a live
// self-test over loopback with the tcpmd5 package itself, and whether the
// kernel's drop events are readable.
package check

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tcplowlevel/tcpmd5/drops"
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
	Check  string
	Status Status
	Value  string
	// Number is the value as a number where it is one: bytes of
	// optmem_max, keys per socket, sockets of the steering listener.
	Number *int
	Detail string
}

// IDs are the ids a result can have: the JSON's stable names for the
// rows, as the README lists them.
var IDs = []string{
	"platform", "signing", "prefix_keys", "interface_keys", "mptcp_listeners", "optmem_max",
	"keys_per_socket", "listener_steering", "tcp_ao", "drop_events", "ttl_security",
	"self_test", "self_test_right_key", "self_test_wrong_key", "self_test_no_key",
	"self_test_unsigned_peer", "self_test_ttl_security", "self_test_default_ttl",
	"self_test_tcp_ao", "self_test_tcp_ao_right_key", "self_test_tcp_ao_wrong_key",
}

// ID returns the result's stable id: its check's name in lower case, each
// run of other characters an underscore ("self-test: right key" is
// "self_test_right_key"); [IDs] lists them.
func (r Result) ID() string {
	var b strings.Builder
	gap := false
	for _, c := range strings.ToLower(r.Check) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			if gap && b.Len() > 0 {
				b.WriteByte('_')
			}
			b.WriteRune(c)
			gap = false
		} else {
			gap = true
		}
	}
	return b.String()
}

// unit is what Number counts, by id.
var unit = map[string]string{"optmem_max": "bytes", "keys_per_socket": "keys", "listener_steering": "sockets"}

// MarshalJSON encodes r as check -json prints it:
// {"id","check","status","value","number","unit","detail"}, status in
// lower case ("ok", "fail", "info", "warn", "skip"), and number and unit
// null where the value is not a number.
func (r Result) MarshalJSON() ([]byte, error) {
	var u *string
	if n, ok := unit[r.ID()]; ok && r.Number != nil {
		u = &n
	}
	return json.Marshal(struct {
		ID     string  `json:"id"`
		Check  string  `json:"check"`
		Status string  `json:"status"`
		Value  string  `json:"value"`
		Number *int    `json:"number"`
		Unit   *string `json:"unit"`
		Detail string  `json:"detail"`
	}{r.ID(), r.Check, strings.ToLower(string(r.Status)), r.Value, r.Number, u, r.Detail})
}

// Report is the outcome of [Run].
type Report struct {
	// Signing reports that the kernel signs segments and the self-test
	// saw every verdict it expected.
	Signing bool `json:"signing"`
	// TTLSecurity reports that sockets here can drop segments by their TTL
	// (RFC 5082 GTSM) and, where signing works, that the self-test saw a
	// listener with TTL security take a signed peer that has it and drop
	// one that sends with the default TTL.
	TTLSecurity bool `json:"ttl_security"`
	// TCPAO reports that the kernel has TCP-AO (RFC 5925) and the
	// self-test connected with an AO key and saw a wrong one refused.
	TCPAO   bool     `json:"tcp_ao"`
	Results []Result `json:"results"`
}

// OK reports that no result failed: signing works, and TTL security either
// works or is missing, which is a warning.
func (r Report) OK() bool {
	for _, res := range r.Results {
		if res.Status == StatusFail {
			return false
		}
	}
	return r.Signing
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
	ao, aoOK := aoSupport()
	results = append(results, ao, dropEvents())
	ttl, ttlOK := ttlSecurity(ctx)
	results = append(results, ttl)
	var ttlResults []Result
	switch {
	case !signing:
		results = append(results, Result{Check: "self-test", Status: StatusSkip, Value: "not run", Detail: "the kernel does not sign segments"})
	case !ttlOK:
		results = append(results, selfTest(ctx, opts.Refusal)...)
		results = append(results, Result{Check: "self-test: TTL security", Status: StatusSkip, Value: "not run", Detail: "sockets here cannot drop segments by TTL"})
	default:
		var wg sync.WaitGroup
		wg.Go(func() { ttlResults = ttlSelfTest(ctx, opts.Refusal) })
		results = append(results, selfTest(ctx, opts.Refusal)...)
		wg.Wait()
	}
	var aoResults []Result
	if aoOK {
		aoResults = aoSelfTest(ctx, opts.Refusal)
	}
	r := Report{Signing: signing, TTLSecurity: ttlOK, TCPAO: aoOK, Results: slices.Concat(results, ttlResults, aoResults)}
	for _, res := range aoResults {
		if res.Status == StatusFail {
			r.TCPAO = false
		}
	}
	for _, res := range results {
		if res.Status == StatusFail {
			r.Signing = false
		}
	}
	for _, res := range ttlResults {
		if res.Status == StatusFail {
			r.TTLSecurity = false
		}
	}
	return r
}

// dropEvents reports whether the kernel's drop events, which tcpmd5 watch
// reads to name who fails our signatures and why, are readable here.
func dropEvents() Result {
	r := Result{Check: "drop events"}
	w, err := drops.Watch(drops.Filter{})
	switch {
	case err == nil:
		defer w.Close()
		r.Status, r.Value = StatusOK, "yes"
		r.Detail = "tcpmd5 watch names the peer and the reason of each dropped segment"
		if m := w.Missing(); len(m) > 0 {
			r.Detail += fmt.Sprintf("; this kernel does not report %v", m)
		}
	case errors.Is(err, os.ErrPermission):
		r.Status, r.Value = StatusWarn, "no permission"
		r.Detail = err.Error() + "; tcpmd5 watch falls back to the counters, peer unknown"
	default:
		r.Status, r.Value = StatusInfo, "no"
		r.Detail = err.Error() + "; tcpmd5 watch falls back to the counters, peer unknown"
	}
	return r
}
