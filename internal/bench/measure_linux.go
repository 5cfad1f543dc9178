package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tcplowlevel/tcpmd5"
)

// What a client sends first, telling the server what the connection is for.
const (
	opPing = 'p' // one byte back, then wait for the client to close
	opBulk = 'b' // read to EOF, then send the byte count, 8 bytes big endian
)

// Serve answers connections on ln as RoundTrip and Bulk expect, until ln is
// closed; the returned function closes ln and waits for every connection.
func Serve(ln net.Listener) (stop func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { answer(c) })
		}
	})
	return func() {
		ln.Close()
		wg.Wait()
	}
}

func answer(c net.Conn) {
	defer c.Close()
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case opPing:
		if _, err := c.Write(op[:]); err != nil {
			return
		}
		_, _ = c.Read(op[:]) // the client's reset or FIN
	case opBulk:
		buf := make([]byte, 256<<10)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		_, _ = c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	}
}

// RoundTrip sets up one connection with dial to addr, sends one byte, reads
// it back and closes the connection with a reset (SO_LINGER 0), so that
// neither side keeps it in TIME_WAIT and the client's ports are not used
// up. It returns how long all that took.
func RoundTrip(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr string) (time.Duration, error) {
	start := time.Now()
	c, err := dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	b := [1]byte{opPing}
	if _, err := c.Write(b[:]); err != nil {
		c.Close()
		return 0, err
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return 0, err
	}
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		c.Close()
		return 0, err
	}
	if err := c.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// Endpoint is a listening address and the variant that dials it.
type Endpoint struct {
	Variant Variant
	Addr    string
}

// SetupRates runs RoundTrip for d, one connection to each target in turn,
// so that whatever else the machine does falls on every target alike. It
// returns, per target, the connections per second of time spent setting
// them up, and every latency.
func SetupRates(ctx context.Context, targets []Endpoint, d time.Duration) ([]float64, [][]time.Duration, error) {
	lats := make([][]time.Duration, len(targets))
	spent := make([]time.Duration, len(targets))
	for end := time.Now().Add(d); time.Now().Before(end); {
		for i, t := range targets {
			lat, err := RoundTrip(ctx, t.Variant.Dial, t.Addr)
			if err != nil {
				return nil, nil, fmt.Errorf("bench: %s set-up: %w", t.Variant.Name, err)
			}
			lats[i] = append(lats[i], lat)
			spent[i] += lat
		}
	}
	rates := make([]float64, len(targets))
	for i := range targets {
		rates[i] = float64(len(lats[i])) / spent[i].Seconds()
	}
	return rates, lats, nil
}

// StartBulk dials addr for a bulk transfer: write to the connection, then
// hand it to FinishBulk.
func StartBulk(ctx context.Context, v Variant, addr string) (*net.TCPConn, error) {
	c, err := v.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{opBulk}); err != nil {
		c.Close()
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// FinishBulk ends a bulk transfer that wrote sent bytes after StartBulk: it
// waits until the server has read them all and checks that it got as many.
func FinishBulk(c *net.TCPConn, sent int64) error {
	defer c.Close()
	if err := c.CloseWrite(); err != nil {
		return err
	}
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("bench: waiting for the server to count the bytes: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(b[:])); got != sent {
		return fmt.Errorf("bench: the server read %d bytes, the client sent %d", got, sent)
	}
	return c.SetLinger(0)
}

// BulkRate sends chunk-sized writes over conns connections at once for d
// and returns the rate at which the server received them, in 10^6 bytes per
// second. The clock runs from the first write until the server has counted
// the last byte of every connection.
func BulkRate(ctx context.Context, v Variant, addr string, conns, chunk int, d time.Duration) (float64, error) {
	cs := make([]*net.TCPConn, 0, conns)
	for range conns {
		c, err := StartBulk(ctx, v, addr)
		if err != nil {
			for _, c := range cs {
				c.Close()
			}
			return 0, fmt.Errorf("bench: %s bulk: %w", v.Name, err)
		}
		cs = append(cs, c)
	}
	buf := make([]byte, chunk)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		errs  []error
	)
	start := time.Now()
	end := start.Add(d)
	for _, c := range cs {
		wg.Go(func() {
			var sent int64
			var err error
			for err == nil && time.Now().Before(end) {
				var n int
				n, err = c.Write(buf)
				sent += int64(n)
			}
			if err == nil {
				err = FinishBulk(c, sent)
			} else {
				c.Close()
			}
			mu.Lock()
			total += sent
			errs = append(errs, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("bench: %s bulk: %w", v.Name, err)
	}
	return float64(total) / elapsed.Seconds() / 1e6, nil
}

// ExtraKey is a key for a host in 127.6.250.0/24 that no listener holds
// and no client uses: SetKey measurements add it and remove it again.
var ExtraKey = tcpmd5.Key{Peer: netip.MustParsePrefix("127.6.250.1/32"), Secret: []byte(secret)}

// SetKeyCosts measures SetKey on each listener in turn, batch calls at a
// time, until each has had calls calls, and returns per listener the
// median over its batches of the nanoseconds per call: a batch that the
// scheduler interrupted does not move it.
//
// Each timed call adds ExtraKey, one key more than the listener holds, for
// which the kernel walks its whole list of keys and allocates one; an
// untimed RemoveKey then takes it away, so the number of keys stays the
// same.
func SetKeyCosts(ls []Listener, calls, batch int) ([]float64, error) {
	perCall := make([][]float64, len(ls))
	for done := 0; done < calls; done += batch {
		for i, l := range ls {
			var spent time.Duration
			for range batch {
				start := time.Now()
				err := l.SetKey(ExtraKey)
				spent += time.Since(start)
				if err != nil {
					return nil, err
				}
				if err := l.RemoveKey(ExtraKey); err != nil {
					return nil, err
				}
			}
			perCall[i] = append(perCall[i], float64(spent.Nanoseconds())/float64(batch))
		}
	}
	out := make([]float64, len(ls))
	for i := range ls {
		out[i] = Median(perCall[i])
	}
	return out, nil
}
