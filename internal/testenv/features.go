package testenv

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Feature is a kernel capability that some tests need and some kernels
// lack. Tests learn whether the kernel has one by probing it, never from
// its version number, so that one test binary runs on every kernel.
type Feature string

// The features the suite probes for.
const (
	MD5   Feature = "md5"   // TCP_MD5SIG (CONFIG_TCP_MD5SIG)
	AO    Feature = "ao"    // TCP_AO_ADD_KEY (CONFIG_TCP_AO, Linux 6.7+)
	VRF   Feature = "vrf"   // VRF devices (CONFIG_NET_VRF), which interface keys need
	MPTCP Feature = "mptcp" // IPPROTO_MPTCP sockets (CONFIG_MPTCP, net.mptcp.enabled)
	IPv6  Feature = "ipv6"  // IPv6 sockets on ::1 (no ipv6.disable=1, the ipv6 module loaded)
	// Tracepoints: tcp:tcp_hash_md5_mismatch (Linux 6.11+, tracing and perf
	// events built in) read through perf_event_open(2).
	Tracepoints Feature = "tracepoints"
)

// Features lists every Feature, in the order reports print them.
var Features = []Feature{MD5, AO, VRF, MPTCP, IPv6, Tracepoints}

// expectVar names the features the kernel under test was built or booted
// with, comma-separated; tools/kernels/run sets it for each kernel.
const expectVar = "TCPMD5_EXPECT_FEATURES"

// probeResult is what probing one feature found: the kernel has it, it
// answered that it has not (absent, with its answer), or the probe itself
// could not run (err), which says nothing about the kernel.
type probeResult struct {
	present bool
	absent  string
	err     error
}

var probes sync.Map // Feature -> func() probeResult, each run once

func probeFeature(f Feature) probeResult {
	once, _ := probes.LoadOrStore(f, sync.OnceValue(func() probeResult { return probeKernel(f) }))
	return once.(func() probeResult)()
}

// Has reports whether the kernel has f, and if not, the kernel's answer
// that says so. It returns an error when the probe could not run at all
// (not root, a tool missing).
func Has(f Feature) (bool, string, error) {
	r := probeFeature(f)
	return r.present, r.absent, r.err
}

// Require skips t when the kernel lacks f: a kernel built or booted without
// a feature lacks it by design, and the skip is not a failure, under CI
// either. It fails t instead when the kernel was declared to have f
// (TCPMD5_EXPECT_FEATURES, set by tools/kernels/run) and the probe did not
// find it, and it calls Missing when the probe could not run.
func Require(t testing.TB, f Feature) {
	t.Helper()
	r := probeFeature(f)
	switch {
	case r.present:
		return
	case r.err != nil:
		Missing(t, fmt.Sprintf("cannot probe the kernel for %s: %v", f, r.err), "run the tests as root with iproute2 installed")
	case expected(f):
		t.Fatalf("this kernel was declared to have %s (%s=%s) but the probe says: %s", f, expectVar, os.Getenv(expectVar), r.absent)
	default:
		t.Skipf("this kernel has no %s (%s), by design: the probe says %s; tools/kernels/run runs this test on a kernel that has it", f, describe(f), r.absent)
	}
}

// expected reports whether the kernel under test was declared to have f.
func expected(f Feature) bool {
	return slices.Contains(strings.Split(os.Getenv(expectVar), ","), string(f))
}

func describe(f Feature) string {
	switch f {
	case MD5:
		return "CONFIG_TCP_MD5SIG"
	case AO:
		return "CONFIG_TCP_AO, Linux 6.7+"
	case VRF:
		return "CONFIG_NET_VRF"
	case MPTCP:
		return "CONFIG_MPTCP and net.mptcp.enabled=1"
	case IPv6:
		return "IPv6 on loopback"
	case Tracepoints:
		return "tcp:tcp_hash_* tracepoints, Linux 6.11+ with CONFIG_EVENT_TRACING and CONFIG_PERF_EVENTS"
	}
	return string(f)
}

// Report returns one line per feature: present, absent with the kernel's
// answer, or why the probe could not run. Test binaries log it once.
func Report() string {
	var b strings.Builder
	for _, f := range Features {
		r := probeFeature(f)
		switch {
		case r.present:
			fmt.Fprintf(&b, "%-12s yes\n", f)
		case r.err != nil:
			fmt.Fprintf(&b, "%-12s unknown: %v\n", f, r.err)
		default:
			fmt.Fprintf(&b, "%-12s no: %s\n", f, r.absent)
		}
	}
	return b.String()
}
