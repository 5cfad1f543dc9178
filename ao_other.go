//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"runtime"
	"syscall"
)

func aoUnsupported() error { return fmt.Errorf("%w (%s)", ErrAOUnsupported, runtime.GOOS) }

func aoProbeOnce() error                            { return aoUnsupported() }
func connAO(int, AOKey, bool) error                 { return aoUnsupported() }
func aoKeyCharge(string) int                        { return 0 }
func aoInfo(int) (AOStats, error)                   { return AOStats{}, aoUnsupported() }
func aoSetInfo(int, bool, uint8, bool, uint8) error { return aoUnsupported() }

func applyAOKeys(_ syscall.RawConn, _ int, keys []AOKey, _ bool) error {
	if len(keys) == 0 {
		return nil
	}
	return aoUnsupported()
}
func replaceAOKey(syscall.RawConn, int, AOKey, AOKey, bool) error { return aoUnsupported() }
func removeAOKeyFrom(syscall.RawConn, int, AOKey) error           { return aoUnsupported() }
func acceptedAO(syscall.RawConn) (bool, error)                    { return false, nil }
