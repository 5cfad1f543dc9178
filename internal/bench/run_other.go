//go:build !linux

package bench

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/tcplowlevel/tcpmd5"
)

// Run measures nothing here: TCP MD5 signatures need Linux.
func Run(ctx context.Context, cfg Config, progress io.Writer) (*Report, error) {
	return nil, fmt.Errorf("bench: not supported here (%s): %w", runtime.GOOS, tcpmd5.ErrMD5Unsupported)
}
