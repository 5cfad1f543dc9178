//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"fmt"
	"runtime"
)

func aoUnsupported() error { return fmt.Errorf("%w (%s)", ErrAOUnsupported, runtime.GOOS) }

func aoProbeOnce() error                            { return aoUnsupported() }
func aoAdd(int, AOKey, bool, bool) error            { return aoUnsupported() }
func aoDel(int, AOKey) error                        { return aoUnsupported() }
func aoInfo(int) (AOStats, error)                   { return AOStats{}, aoUnsupported() }
func aoSetInfo(int, bool, uint8, bool, uint8) error { return aoUnsupported() }
