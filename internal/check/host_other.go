//go:build !linux

package check

import (
	"fmt"
	"runtime"

	"github.com/tcplowlevel/tcpmd5"
)

// host reports that only Linux signs segments.
func host() ([]Result, bool) {
	return []Result{
		{Check: "platform", Status: StatusInfo, Value: runtime.GOOS + "/" + runtime.GOARCH},
		{Check: "signing", Status: StatusFail, Value: "no", Detail: fmt.Sprintf("%s has no TCP_MD5SIG; only Linux signs segments (%v)", runtime.GOOS, tcpmd5.ErrMD5Unsupported)},
	}, false
}

// aoSupport reports that only Linux has TCP-AO.
func aoSupport() (Result, bool) {
	return Result{Check: "TCP-AO", Status: StatusInfo, Value: "no", Detail: fmt.Sprintf("%s has no TCP-AO; only Linux 6.7+ does (%v)", runtime.GOOS, tcpmd5.ErrAOUnsupported)}, false
}
