package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
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

// SetupRate runs RoundTrip back to back from clients goroutines for d and
// returns the connections per second and every latency.
func SetupRate(ctx context.Context, v Variant, addr string, clients int, d time.Duration) (float64, []time.Duration, error) {
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(d)
	for range clients {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(end) {
				lat, err := RoundTrip(ctx, v.Dial, addr)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				mine = append(mine, lat)
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, nil, fmt.Errorf("bench: %s set-up: %w", v.Name, err)
	}
	return float64(len(lats)) / elapsed.Seconds(), lats, nil
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

// SetKeyCost calls l.SetKey calls times, replacing the secret of the
// client's key, the one installed first and so the last the kernel finds in
// its list, with one of two secrets in turn: the number of keys stays the
// same. It returns nanoseconds per call.
func SetKeyCost(l Listener, calls int) (float64, error) {
	a, b := ClientKey, ClientKey
	a.Secret = []byte(secret + "-a")
	b.Secret = []byte(secret)
	start := time.Now()
	for i := range calls {
		k := a
		if i%2 == 1 {
			k = b
		}
		if err := l.SetKey(k); err != nil {
			return 0, err
		}
	}
	elapsed := time.Since(start)
	if calls%2 == 1 { // leave the secret the clients hold
		if err := l.SetKey(b); err != nil {
			return 0, err
		}
	}
	return float64(elapsed.Nanoseconds()) / float64(calls), nil
}
