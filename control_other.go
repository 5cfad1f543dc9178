//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
)

// The fd-level verbs, each stubbed once: only Linux signs segments, so
// every verb that touches a key or a socket option fails, and the rest
// report a socket that holds nothing.

func md5Fits(_ int, k Key) error                          { return unsupported(k) }
func md5Add(_, _ int, k Key) error                        { return unsupported(k) }
func md5Del(_, _ int, k Key) (bool, error)                { return false, unsupported(k) }
func aoAdd(_, _ int, _ AOKey) error                       { return aoUnsupported() }
func aoAddSigning(_, _ int, _ AOKey) error                { return aoUnsupported() }
func aoDel(_, _ int, _ AOKey) error                       { return aoUnsupported() }
func aoDelSwitching(_, _ int, _ AOKey, _, _ uint8) error  { return aoUnsupported() }
func aoSetSigning(int, uint8, uint8) error                { return aoUnsupported() }
func aoGetInfo(int) (AOStats, error)                      { return AOStats{}, aoUnsupported() }
func aoKeyVerified(int, int, AOKey) (uint64, error)       { return 0, aoUnsupported() }
func aoSetCurrent(int, uint8) error                       { return aoUnsupported() }
func aoSetRNext(int, uint8) error                         { return aoUnsupported() }
func sockFamily(int) (int, error)                         { return 0, nil }
func sockIfindex(int) (int, error)                        { return 0, nil }
func sockQueued(int) bool                                 { return false }
func sockInherited(int) (inherited, error)                { return inherited{}, nil }
func sockReusePort(int) error                             { return nil } // a listener here never needs a second socket
func sockSteer(int, int) error                            { return unsupported(Key{}) }
func sockFDTable(int, int) error                          { return nil } // a group here never grows
func sockTTLSecurity(int, int) error                      { return ttlUnsupported() }
func othersInGroup(int, netip.AddrPort, int) (int, error) { return 0, nil }
func optmemMax() (int, error)                             { return 0, errors.ErrUnsupported }
func vrfDevice(int) error                                 { return nil } // installing the key fails with ErrMD5Unsupported

var aoProbeOnce = aoUnsupported

func probe() error {
	return fmt.Errorf("%w (%s has no TCP_MD5SIG; only Linux signs segments)", ErrMD5Unsupported, runtime.GOOS)
}

func unsupported(k Key) error {
	if !k.Peer.IsValid() {
		return probe()
	}
	return fmt.Errorf("%w (key for %s: %s has no TCP_MD5SIG; only Linux signs segments)", ErrMD5Unsupported, k.peerString(), runtime.GOOS)
}

func aoUnsupported() error { return fmt.Errorf("%w (%s)", ErrAOUnsupported, runtime.GOOS) }

func ttlUnsupported() error {
	return fmt.Errorf("%w (%s: only Linux has IP_MINTTL here)", ErrTTLSecurityUnsupported, runtime.GOOS)
}
