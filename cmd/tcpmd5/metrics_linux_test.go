package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/internal/netstat"
	"github.com/tcplowlevel/tcpmd5/internal/testenv"
	"github.com/tcplowlevel/tcpmd5/internal/testkit"
)

// addrIn returns the first address that b printed on stderr after prefix.
func addrIn(t *testing.T, b *background, prefix string) string {
	t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(prefix) + `(\d+\.\d+\.\d+\.\d+:\d+)`)
	var addr string
	b.waitFor(t, prefix+"ADDR", func(_, stderr []string) bool {
		for _, l := range stderr {
			if m := re.FindStringSubmatch(l); m != nil {
				addr = m[1]
				return true
			}
		}
		return false
	})
	return addr
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// get makes an HTTP GET from the calling goroutine, so from its network
// namespace (http.Client dials from goroutines of its own, which are not),
// and returns the body of a 200 answer.
func get(t *testing.T, addr, path string) ([]byte, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, body)
	}
	return body, err
}

// promSample is one series of a Prometheus instant query's answer.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query asks Prometheus at addr for expr now and returns each series'
// labels and value.
func query(t *testing.T, addr, expr string) []promSample {
	t.Helper()
	body, err := get(t, addr, "/api/v1/query?query="+url.QueryEscape(expr))
	if err != nil {
		return nil // not up yet
	}
	var answer struct {
		Status string `json:"status"`
		Data   struct {
			Result []promSample `json:"result"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(body, &answer), "%s", body)
	require.Equal(t, "success", answer.Status, "%s", body)
	return answer.Data.Result
}

// TestPrometheusScrapes runs a real Prometheus server (Debian's package)
// in a network namespace of its own, scraping "tcpmd5 watch -metrics" and
// "tcpmd5 listen -k -metrics". A peer signs with another secret, and an
// unsigned peer that no key covers connects: Prometheus's query API must
// then return the drops under the peer's address and md5-mismatch, from
// both, as many as TCPMD5Failure moved; the refusal under the unsigned
// peer's address and no-key, from listen; the kernel's TCPMD5Failure as
// the kernel has it; and both reading drop events.
func TestPrometheusScrapes(t *testing.T) {
	requireMD5(t)
	testenv.Require(t, testenv.Tracepoints)
	prometheus := testenv.RequireTool(t, "prometheus", "prometheus")
	t.Parallel()
	testenv.Netns(t)

	file := keyFile(t, 0o600, ourAddr+" "+secretA+"\n")
	ln := start(t, binary, "listen", "-k", "-metrics", "127.0.0.1:0", "-key-file", file, peerAddr+":0")
	listenMetrics := addrIn(t, ln, "tcpmd5 listen: serving metrics at http://")
	addr := addrIn(t, ln, "tcpmd5 listen: listening on ")
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	w := start(t, binary, "watch", "-json", "-port", port, "-metrics", "127.0.0.1:0")
	watchMetrics := addrIn(t, w, "tcpmd5 watch: serving metrics at http://")
	w.waitFor(t, "watch's ready line", func(_, stderr []string) bool {
		return contains(stderr, "watching segments dropped for their signature on port "+port)
	})

	dir := t.TempDir()
	config := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tcpmd5
    static_configs:
      - targets: ['%s', '%s']
`, listenMetrics, watchMetrics)), 0o600))
	prom := "127.0.0.1:" + strconv.Itoa(freePort(t))
	start(t, prometheus, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+prom, "--log.level=warn")

	before := testkit.Counters(t)
	d := &tcpmd5.Dialer{Keys: []tcpmd5.Key{key(t, peerAddr, secretB)}}
	d.Timeout = testkit.RefuseAfter
	d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ourAddr)}
	c, err := d.Dial("tcp4", addr)
	testkit.RequireRefused(t, c, err)
	moved := before.Delta(testkit.Counters(t), netstat.MD5Failure)[netstat.MD5Failure]
	require.Positive(t, moved)

	unsigned := &net.Dialer{Timeout: testkit.MustConnect, LocalAddr: &net.TCPAddr{IP: net.ParseIP(otherAddr)}}
	if c, err := unsigned.Dial("tcp4", addr); err == nil {
		_, _ = c.Read(make([]byte, 1)) // the reset
		c.Close()
	}
	failures := testkit.Counters(t)[netstat.MD5Failure]

	// Each expression, and the value every series of its answer must
	// reach, per instance.
	want := []struct {
		expr      string
		instances []string
		value     string
	}{
		{`tcpmd5_dropped_segments_total{remote="` + ourAddr + `",local="` + addr + `",reason="md5-mismatch"}`, []string{listenMetrics, watchMetrics}, strconv.FormatUint(moved, 10)},
		{`tcpmd5_refused_connections_total{remote="` + otherAddr + `",local="` + addr + `",reason="no-key"}`, []string{listenMetrics}, "1"},
		{`tcpmd5_netstat_total{counter="TCPMD5Failure"}`, []string{listenMetrics, watchMetrics}, strconv.FormatUint(failures, 10)},
		{`tcpmd5_drop_events_watched`, []string{listenMetrics, watchMetrics}, "1"},
	}
	for _, q := range want {
		var got []promSample
		deadline := time.Now().Add(testkit.MustConnect)
		for ok := false; !ok; time.Sleep(200 * time.Millisecond) {
			got = query(t, prom, q.expr)
			seen := make(map[string]bool)
			for _, s := range got {
				if s.Value[1] == q.value {
					seen[s.Metric["instance"]] = true
				}
			}
			ok = len(seen) == len(q.instances)
			for _, i := range q.instances {
				ok = ok && seen[i]
			}
			if !ok && time.Now().After(deadline) {
				t.Fatalf("Prometheus never returned %s = %s from %v; the last answer: %+v", q.expr, q.value, q.instances, got)
			}
		}
		assert.Len(t, got, len(q.instances), "%s: series of other instances", q.expr)
		t.Logf("Prometheus: %s = %s from %d instances", q.expr, q.value, len(q.instances))
	}
	assert.Empty(t, query(t, prom, `tcpmd5_refused_connections_total{remote="`+ourAddr+`"}`), "the signed peer was dropped by the kernel, never refused at Accept")
	requireNoSecret(t, ln.output()+w.output())
}
