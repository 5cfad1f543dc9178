//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"runtime"
	"syscall"
)

func aoUnsupported() error { return fmt.Errorf("%w (%s)", ErrAOUnsupported, runtime.GOOS) }

func aoProbeOnce() error                            { return aoUnsupported() }
func aoAdd(int, AOKey, bool, bool) error            { return aoUnsupported() }
func aoDel(int, AOKey) error                        { return aoUnsupported() }
func aoInfo(int) (AOStats, error)                   { return AOStats{}, aoUnsupported() }
func aoSetInfo(int, bool, uint8, bool, uint8) error { return aoUnsupported() }

func applyAOKeys(_ syscall.RawConn, keys []AOKey, _ bool) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	return 0, aoUnsupported()
}
func replaceAOKey(syscall.RawConn, AOKey, AOKey, bool) (int, error) { return 0, aoUnsupported() }
func removeAOKeyFrom(syscall.RawConn, AOKey) (int, error)           { return 0, aoUnsupported() }
func acceptedAO(syscall.RawConn) (bool, error)                      { return false, nil }
