//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"runtime"
	"syscall"
)

// applyKeys fails for any key: only Linux signs segments.
func applyKeys(_ syscall.RawConn, keys []Key) error {
	if len(keys) == 0 {
		return nil
	}
	return unsupported(keys[0])
}

// applyKeysFamily fails for any key: only Linux signs segments.
func applyKeysFamily(c syscall.RawConn, _ int, keys []Key) error { return applyKeys(c, keys) }

// setKey fails: only Linux signs segments.
func setKey(_ syscall.RawConn, _ int, k Key) error {
	return unsupported(k)
}

// rawFamily reports no family: no socket here takes keys.
func rawFamily(syscall.RawConn) (int, error) { return 0, nil }

// acceptedSigned reports false: no socket here holds keys.
func acceptedSigned(_, _ syscall.RawConn, _, _ int) (bool, error) { return false, nil }

// boundIfindex reports no interface: no socket here takes interface keys.
func boundIfindex(syscall.RawConn) (int, error) { return 0, nil }

// removeKey fails: only Linux signs segments.
func removeKey(_ syscall.RawConn, _ int, k Key) error {
	return unsupported(k)
}

func probe() error {
	return fmt.Errorf("%w (%s has no TCP_MD5SIG; only Linux signs segments)", ErrMD5Unsupported, runtime.GOOS)
}

func unsupported(k Key) error {
	return fmt.Errorf("%w (key for %s: %s has no TCP_MD5SIG; only Linux signs segments)", ErrMD5Unsupported, k.peerString(), runtime.GOOS)
}

// applyTTLSecurity fails for any hop count but 0: only Linux drops segments
// by TTL here.
func applyTTLSecurity(_ syscall.RawConn, hops int) error {
	if hops == 0 {
		return nil
	}
	return fmt.Errorf("%w (%s: only Linux has IP_MINTTL here)", ErrTTLSecurityUnsupported, runtime.GOOS)
}
