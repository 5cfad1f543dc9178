//go:build !windows

package cli

import (
	"os"
	"syscall"
)

// sessionsSignal asks listen and dial to print their sessions' keys.
var sessionsSignal os.Signal = syscall.SIGUSR1
