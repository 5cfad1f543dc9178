package cli

import "os"

// sessionsSignal asks listen and dial to print their sessions' keys:
// Windows has no SIGUSR1, so there SIGHUP's reload alone prints them.
var sessionsSignal os.Signal
