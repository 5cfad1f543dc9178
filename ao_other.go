//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"runtime"
	"syscall"
)

func aoUnsupported() error { return fmt.Errorf("%w (%s)", ErrAOUnsupported, runtime.GOOS) }

// Everything that touches a TCP-AO key fails: only Linux has TCP-AO. No
// socket here has AO state, and none holds AO keys to charge.

func aoProbeOnce() error                          { return aoUnsupported() }
func connAO(syscall.RawConn, AOKey, bool) error   { return aoUnsupported() }
func connAOInfo(syscall.RawConn) (AOStats, error) { return AOStats{}, aoUnsupported() }
func connSetAOInfo(syscall.RawConn, bool, uint8, bool, uint8) error {
	return aoUnsupported()
}

func applyAOKeys(_ syscall.RawConn, _ int, keys []AOKey, _ bool) error {
	if len(keys) == 0 {
		return nil
	}
	return aoUnsupported()
}
func replaceAOKey(syscall.RawConn, int, AOKey, AOKey, bool) error { return aoUnsupported() }
func removeAOKeyFrom(syscall.RawConn, int, AOKey) error           { return aoUnsupported() }
func acceptedAO(syscall.RawConn) (bool, error)                    { return false, nil }
