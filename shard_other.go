//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
)

// joinGroup does nothing: without keys a listener never needs more than one
// socket, and only Linux takes keys.
func joinGroup(syscall.RawConn) error { return nil }

// steer fails: only Linux signs segments, so no listener needs to spread
// keys over sockets.
func steer(syscall.RawConn, int) error {
	return fmt.Errorf("%w (%s: no TCP MD5 keys to spread over sockets)", ErrMD5Unsupported, runtime.GOOS)
}

// othersInGroup finds none: no listener here has a group.
func othersInGroup(int, netip.AddrPort, int) (int, error) { return 0, nil }

// keysFull reports false: no socket here takes keys at all.
func keysFull(error) bool { return false }

// keysPerSocket returns the most keys a socket could hold; here none are
// ever installed.
func keysPerSocket() int { return 1 << 30 }

// socketCapacity is keysPerSocket: no socket here holds keys.
func socketCapacity() int { return keysPerSocket() }

// optmemFull names no setting: no socket here holds keys.
func optmemFull() string { return "no socket here takes keys" }
