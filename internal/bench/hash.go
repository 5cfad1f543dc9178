package bench

import (
	"crypto/md5"
	"time"
)

// HashRate hashes 64 KiB blocks, about one loopback segment each, with
// crypto/md5 on the calling goroutine for d and returns 10^6 bytes per
// second: the speed of MD5 on one core.
func HashRate(d time.Duration) float64 {
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i)
	}
	h := md5.New()
	var sum [md5.Size]byte
	var n int64
	start := time.Now()
	for { // at least once: a machine that stalls past d still gets a rate
		h.Reset()
		h.Write(buf)
		h.Sum(sum[:0])
		n += int64(len(buf))
		if time.Since(start) >= d {
			break
		}
	}
	return float64(n) / time.Since(start).Seconds() / 1e6
}
