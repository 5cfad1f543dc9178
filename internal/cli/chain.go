package cli

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tcplowlevel/tcpmd5"
	"github.com/tcplowlevel/tcpmd5/keyfile"
)

// keyChain is the chain listen and dial run their keys through, so that
// keys with lifetimes take over on schedule and a reload reaches the live
// connections.
type keyChain struct {
	*tcpmd5.KeyChain
	command string
	applied keyfile.File // what the chain was last given
}

// newKeyChain returns a chain holding keys.
func newKeyChain(command string, keys keyfile.File) (*keyChain, error) {
	c := &keyChain{KeyChain: tcpmd5.NewKeyChain(), command: command}
	if err := keys.UpdateChain(c.KeyChain, keyfile.File{}); err != nil {
		return nil, err
	}
	c.applied = keys
	return c, nil
}

// reloadOnHangup reloads the chain from load on every SIGHUP, until stop
// is called, and prints what it did and the sessions' key state; SIGUSR1
// prints the sessions' key state alone.
func (e *env) reloadOnHangup(c *keyChain, load func() (keyfile.File, error)) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP)
	if sessionsSignal != nil {
		signal.Notify(sigs, sessionsSignal)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sig := range sigs {
			if sig == syscall.SIGHUP {
				e.reload(c, load)
			}
			e.printSessions(c)
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(sigs)
		<-done
	}
}

// reload gives the chain the keys load returns, and says how it went.
func (e *env) reload(c *keyChain, load func() (keyfile.File, error)) {
	keys, err := load()
	if err != nil {
		fmt.Fprintf(e.stderr, "tcpmd5 %s: reload failed, the keys stay as they were: %v\n", c.command, err)
		return
	}
	if err := keys.UpdateChain(c.KeyChain, c.applied); err != nil {
		fmt.Fprintf(e.stderr, "tcpmd5 %s: reloaded %d keys, with failures: %v\n", c.command, keys.Len(), err)
	} else {
		fmt.Fprintf(e.stderr, "tcpmd5 %s: reloaded %d keys\n", c.command, keys.Len())
	}
	c.applied = keys
}

// printSessions prints each live connection's key state, one line each.
func (e *env) printSessions(c *keyChain) {
	sessions := c.Sessions()
	fmt.Fprintf(e.stderr, "tcpmd5 %s: %d sessions\n", c.command, len(sessions))
	for _, s := range sessions {
		var keys []string
		for _, k := range s.Keys {
			keys = append(keys, "md5 "+k.Peer.String())
		}
		for _, k := range s.AOKeys {
			keys = append(keys, fmt.Sprintf("ao %s send=%d recv=%d", k.Peer, k.SendID, k.RecvID))
		}
		line := fmt.Sprintf("tcpmd5 %s: session %s from %s: keys [%s]", c.command, s.Remote, s.Local, strings.Join(keys, ", "))
		if len(s.AOKeys) > 0 {
			line += fmt.Sprintf(", current %d, rnext %d", s.Current, s.RNext)
		}
		if s.Lagging {
			line += ", lagging: the peer has not taken the preferred key"
		}
		if s.Err != nil {
			line += ", failed: " + s.Err.Error()
		}
		fmt.Fprintln(e.stderr, line)
	}
}
