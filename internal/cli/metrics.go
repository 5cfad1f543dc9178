package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/tcplowlevel/tcpmd5/metrics"
)

// metricsFlag registers the -metrics ADDR flag of watch and listen.
func metricsFlag(fs *flag.FlagSet) *string {
	return fs.String("metrics", "", "serve Prometheus metrics at http://`ADDR`/metrics (such as 127.0.0.1:9179): drops by peer and reason, refusals, the kernel's signature counters")
}

// serveMetrics serves set at http://addr/metrics until stop is called, and
// says where on stderr, as command. An empty addr serves nothing.
func (e *env) serveMetrics(command, addr string, set *metrics.Set) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", set)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			e.warnf("metrics: %v", err)
		}
	}()
	fmt.Fprintf(e.stderr, "tcpmd5 %s: serving metrics at http://%s/metrics\n", command, ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
