//go:build !linux || tcpmd5stub

package drops

import (
	"context"
	"fmt"
	"runtime"
)

type watcher struct{ missing []Reason }

func watch(Filter) (*watcher, error) { return nil, fmt.Errorf("%w (%s)", ErrUnsupported, runtime.GOOS) }

func (*watcher) read(context.Context) ([]Drop, error) { return nil, ErrUnsupported }
func (*watcher) lost() uint64                         { return 0 }
func (*watcher) close() error                         { return nil }
