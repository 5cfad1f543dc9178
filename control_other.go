//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
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

// installEach installs none: only Linux signs segments.
func installEach(c syscall.RawConn, keys []Key) (int, error) { return 0, applyKeys(c, keys) }

// setKey fails: only Linux signs segments.
func setKey(_ syscall.RawConn, _ int, k Key) error {
	return unsupported(k)
}

// rawFamily reports no family: no socket here takes keys.
func rawFamily(syscall.RawConn) (int, error) { return 0, nil }

// watchQueue needs no second descriptor here: waitQueued does not wait.
func watchQueue(syscall.RawConn) (*os.File, error) { return nil, nil }

// waitQueued returns at once: no key can change on a socket here, so
// Accept needs no lock against key changes and lets accept(2) wait.
func waitQueued(syscall.RawConn, *sync.RWMutex) (release func(), err error) {
	return func() {}, nil
}

// queued reports false: no key change here drains a queue.
func queued(syscall.RawConn) bool { return false }

// md5Held reports false: no socket here holds keys.
func md5Held(syscall.RawConn, netip.Addr, int, []byte) (bool, error) { return false, nil }

// boundIfindex reports no interface: no socket here takes interface keys.
func boundIfindex(syscall.RawConn) (int, error) { return 0, nil }

// removeKey fails: only Linux signs segments.
func removeKey(_ syscall.RawConn, _ int, k Key) error {
	return unsupported(k)
}

// vrfDevice says nothing: no key is installed here, and installing one
// fails with ErrMD5Unsupported.
func vrfDevice(int) error { return nil }

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
