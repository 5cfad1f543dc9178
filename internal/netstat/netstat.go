// Package netstat reads the kernel's TCP counters from /proc/net/netstat,
// among them the three that count segments dropped for their RFC 2385
// signature: TCPMD5NotFound (a key was expected, the segment had none),
// TCPMD5Unexpected (the segment was signed, no key was expected) and
// TCPMD5Failure (the signature did not verify).
package netstat

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// The counters that record segments dropped for their signature.
const (
	MD5NotFound   = "TCPMD5NotFound"
	MD5Unexpected = "TCPMD5Unexpected"
	MD5Failure    = "TCPMD5Failure"
)

// The TCP-AO counters (Linux 6.7+ with CONFIG_TCP_AO): segments verified,
// then those dropped for their MAC.
const (
	AOGood        = "TCPAOGood"
	AOBad         = "TCPAOBad"
	AORequired    = "TCPAORequired"
	AOKeyNotFound = "TCPAOKeyNotFound"
)

// MinTTLDrop counts segments dropped because they arrived with a TTL (hop
// limit) below their socket's minimum: TTL security (RFC 5082 GTSM).
const MinTTLDrop = "TCPMinTTLDrop"

// SynRetrans counts SYNs the kernel sent again because no answer came in
// time: a handshake that needed it lost its first SYN.
const SynRetrans = "TCPSynRetrans"

// MD5Counters are the names of the signature counters, in a fixed order.
var MD5Counters = []string{MD5NotFound, MD5Unexpected, MD5Failure}

// Counters are the TcpExt counters of one network namespace by name.
type Counters map[string]uint64

// Read returns the TcpExt counters of the calling thread's network
// namespace (/proc/thread-self/net/netstat), which is the process's unless
// the goroutine locked its thread into another one.
func Read() (Counters, error) {
	f, err := os.Open("/proc/thread-self/net/netstat")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads TcpExt counters in the format of /proc/net/netstat: pairs of
// lines, names then values, each starting with the section name.
func Parse(r io.Reader) (Counters, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		names := strings.Fields(sc.Text())
		if len(names) == 0 || names[0] != "TcpExt:" {
			continue
		}
		if !sc.Scan() {
			break
		}
		values := strings.Fields(sc.Text())
		if len(values) == 0 || values[0] != "TcpExt:" {
			return nil, fmt.Errorf("netstat: the line after TcpExt's names does not hold its values")
		}
		if len(values) != len(names) {
			return nil, fmt.Errorf("netstat: TcpExt has %d names but %d values", len(names)-1, len(values)-1)
		}
		out := make(Counters, len(names)-1)
		for i := 1; i < len(names); i++ {
			v, err := strconv.ParseUint(values[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("netstat: counter %s: %w", names[i], err)
			}
			out[names[i]] = v
		}
		return out, sc.Err()
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("netstat: no TcpExt section")
}

// Delta returns, for each name, how much the counter grew from c to later.
func (c Counters) Delta(later Counters, names ...string) Counters {
	out := make(Counters, len(names))
	for _, n := range names {
		out[n] = later[n] - c[n]
	}
	return out
}
