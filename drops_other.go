//go:build !linux || tcpmd5stub

package tcpmd5

import (
	"context"
	"fmt"
	"runtime"
)

type dropWatcher struct{ missing []DropReason }

func watchDrops(DropFilter) (*dropWatcher, error) {
	return nil, fmt.Errorf("%w (%s)", ErrDropsUnsupported, runtime.GOOS)
}

func (*dropWatcher) read(context.Context) ([]Drop, error) { return nil, ErrDropsUnsupported }
func (*dropWatcher) lost() uint64                         { return 0 }
func (*dropWatcher) close() error                         { return nil }
