package drops_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/tcplowlevel/tcpmd5/drops"
)

// Example prints who fails our signatures on port 179, and why: a peer
// with the wrong secret shows as md5-mismatch.
func Example() {
	w, err := drops.Watch(drops.Filter{Port: 179})
	if err != nil {
		log.Print(err) // needs Linux 6.11+, and CAP_PERFMON or root
		return
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type line struct {
		peer   netip.Addr
		reason drops.Reason
	}
	counts := make(map[line]int)
	for {
		ds, err := w.Read(ctx)
		if err != nil {
			break // the minute is over
		}
		for _, d := range ds {
			counts[line{d.Remote.Addr(), d.Reason}]++
		}
	}
	for l, n := range counts {
		fmt.Printf("%s: %d dropped as %s\n", l.peer, n, l.reason)
	}
	fmt.Printf("%d more not reported (buffers full)\n", w.Lost())
}
