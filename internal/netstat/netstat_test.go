package netstat

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const sample = `TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPMinTTLDrop
TcpExt: 0 3 1 7 2
IpExt: InNoRoutes InOctets
IpExt: 0 1234
`

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     Counters
		err      string
	}{
		{name: "kernel format", in: sample, want: Counters{"SyncookiesSent": 0, MD5NotFound: 3, MD5Unexpected: 1, MD5Failure: 7, "TCPMinTTLDrop": 2}},
		{name: "TcpExt after another section", in: "IpExt: A\nIpExt: 1\nTcpExt: X\nTcpExt: 9\n", want: Counters{"X": 9}},
		{name: "no TcpExt", in: "IpExt: A\nIpExt: 1\n", err: "no TcpExt section"},
		{name: "empty", in: "", err: "no TcpExt section"},
		{name: "values missing", in: "TcpExt: A B\nTcpExt: 1\n", err: "TcpExt has 2 names but 1 values"},
		{name: "names without values", in: "TcpExt: A B\n", err: "no TcpExt section"},
		{name: "not a number", in: "TcpExt: A\nTcpExt: x\n", err: "counter A"},
		{name: "values line of another section", in: "TcpExt: A\nIpExt: 1\n", err: "does not hold its values"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tt.in))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestDelta(t *testing.T) {
	before := Counters{MD5NotFound: 3, MD5Failure: 7}
	after := Counters{MD5NotFound: 5, MD5Failure: 7, MD5Unexpected: 1}
	assert.Equal(t, Counters{MD5NotFound: 2, MD5Unexpected: 1, MD5Failure: 0}, before.Delta(after, MD5Counters...))
}

func TestReadThisHost(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/net/netstat is Linux's")
	}
	c, err := Read()
	require.NoError(t, err)
	for _, n := range MD5Counters {
		_, ok := c[n]
		assert.True(t, ok, "the kernel reports no %s", n)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample)
	f.Add("TcpExt: A\nTcpExt: 1\n")
	f.Add("TcpExt:\nTcpExt:\n")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		// Round trip: the counters printed in the kernel's format parse
		// to the same counters.
		var names, values strings.Builder
		names.WriteString("TcpExt:")
		values.WriteString("TcpExt:")
		for n, v := range got {
			fmt.Fprintf(&names, " %s", n)
			fmt.Fprintf(&values, " %d", v)
		}
		again, err := Parse(strings.NewReader(names.String() + "\n" + values.String() + "\n"))
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}
