package tcpmd5

import (
	"errors"
	"fmt"
)

// ErrTTLSecurityUnsupported reports that this system cannot drop segments
// by their TTL (RFC 5082 GTSM): it is not Linux, or the kernel refused
// IP_MINTTL or IPV6_MINHOPCOUNT.
var ErrTTLSecurityUnsupported = errors.New("tcpmd5: TTL security (GTSM, RFC 5082) is not supported on this system")

// MaxTTLSecurity is the largest hop count TTL security can enforce: a segment
// sent with TTL 255 arrives with at least 1 after 254 routers, the farthest
// peer of 255 hops.
const MaxTTLSecurity = 255

// checkTTLSecurity rejects hop counts outside 0..MaxTTLSecurity.
func checkTTLSecurity(hops int) error {
	if hops < 0 || hops > MaxTTLSecurity {
		return fmt.Errorf("tcpmd5: TTL security of %d hops: give 1 to %d hops, or 0 for off", hops, MaxTTLSecurity)
	}
	return nil
}
