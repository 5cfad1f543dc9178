package keyfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/tcplowlevel/tcpmd5"
)

// Write writes f to w in the key file format, one key a line, MD5 keys
// first, so that Parse reads back the same keys. A secret goes bare where
// it can, and in double quotes where it holds blanks, # or ", or looks
// like an AO parameter. Write writes the secrets: that is what a key file
// is for, so give w the care the file needs (mode 0600). It fails, naming
// the key but not its secret, for what the format cannot hold: a secret
// with a control character other than a tab, or an interface key for a
// range of peers (a zone goes with one address).
func Write(w io.Writer, f File) error {
	bw := bufio.NewWriter(w)
	for i, k := range f.Keys {
		peer, err := peerField(k.Peer.Addr().String(), k.Peer.Bits(), k.Peer.Addr().BitLen(), k.Ifindex)
		spec := ""
		if from := f.Start(i); !from.IsZero() {
			spec = "from=" + from.UTC().Format(time.RFC3339Nano)
		}
		if err == nil {
			err = writeLine(bw, peer, spec, k.Secret)
		}
		if err != nil {
			return fmt.Errorf("keyfile: key for %s: %w", k.Peer, err)
		}
	}
	for i, k := range f.AOKeys {
		peer, err := peerField(k.Peer.Addr().String(), k.Peer.Bits(), k.Peer.Addr().BitLen(), k.Ifindex)
		spec := "ao send=" + strconv.Itoa(int(k.SendID)) + " recv=" + strconv.Itoa(int(k.RecvID)) + " alg=" + k.Algorithm
		if k.MACLen != 0 {
			spec += " mac=" + strconv.Itoa(k.MACLen)
		}
		if k.ExcludeOptions {
			spec += " exclude-options"
		}
		spec += lifetimeSpec(f.Lifetime(i))
		if err == nil {
			err = writeLine(bw, peer, spec, k.Secret)
		}
		if err != nil {
			return fmt.Errorf("keyfile: AO key for %s: %w", k.Peer, err)
		}
	}
	return bw.Flush()
}

// lifetimeSpec writes an AO key's lifetimes as Parse reads them: from= and
// until= where the send and accept lifetimes are alike.
func lifetimeSpec(lt Lifetimes) string {
	var b strings.Builder
	word := func(name string, t time.Time) {
		if !t.IsZero() {
			b.WriteString(" " + name + "=" + t.UTC().Format(time.RFC3339Nano))
		}
	}
	if lt.Send == lt.Accept {
		word("from", lt.Send.From)
		word("until", lt.Send.Until)
		return b.String()
	}
	word("send-from", lt.Send.From)
	word("send-until", lt.Send.Until)
	word("accept-from", lt.Accept.From)
	word("accept-until", lt.Accept.Until)
	return b.String()
}

// peerField writes a peer as Parse reads it: an address for one host, a
// prefix for a range, a host's interface as a numeric zone.
func peerField(addr string, bits, hostBits, ifindex int) (string, error) {
	switch {
	case bits != hostBits && ifindex != 0:
		return "", fmt.Errorf("an interface key for a range of peers has no key file form")
	case bits != hostBits:
		return addr + "/" + strconv.Itoa(bits), nil
	case ifindex != 0:
		return addr + "%" + strconv.Itoa(ifindex), nil
	}
	return addr, nil
}

// writeLine writes one key line: peer, spec if any, the secret.
func writeLine(w *bufio.Writer, peer, spec string, secret []byte) error {
	s := string(secret)
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return fmt.Errorf("byte %d of the secret is a control character, which a key file cannot hold", i+1)
		}
	}
	name, _, _ := strings.Cut(s, "=")
	if s == "" || strings.ContainsAny(s, " \t#\"\\") || isAOParam(s) || isLifetimeWord(name) && strings.Contains(s, "=") {
		s = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
	}
	if spec != "" {
		peer += " " + spec
	}
	_, err := w.WriteString(peer + " " + s + "\n")
	return err
}

// UpdateChain makes c hold the keys of f with their lifetimes, as a reload
// does: every key of f is set first, then the keys of previous (what the
// last update set) that f no longer has are removed. Every failure is in
// the error; the rest is applied all the same.
func (f File) UpdateChain(c *tcpmd5.KeyChain, previous File) error {
	var errs []error
	type md5ID struct {
		peer    string
		ifindex int
		from    time.Time
	}
	keep := make(map[md5ID]bool)
	for i, k := range f.Keys {
		errs = append(errs, c.SetKey(k, f.Start(i)))
		keep[md5ID{k.Peer.String(), k.Ifindex, f.Start(i)}] = true
	}
	type aoID struct {
		peer       string
		ifindex    int
		send, recv uint8
	}
	keepAO := make(map[aoID]bool)
	for i, k := range f.AOKeys {
		lt := f.Lifetime(i)
		errs = append(errs, c.SetAOKey(k, lt.Send, lt.Accept))
		keepAO[aoID{k.Peer.String(), k.Ifindex, k.SendID, k.RecvID}] = true
	}
	for i, k := range previous.Keys {
		if !keep[md5ID{k.Peer.String(), k.Ifindex, previous.Start(i)}] {
			errs = append(errs, c.RemoveKey(k, previous.Start(i)))
		}
	}
	for _, k := range previous.AOKeys {
		if !keepAO[aoID{k.Peer.String(), k.Ifindex, k.SendID, k.RecvID}] {
			errs = append(errs, c.RemoveAOKey(k))
		}
	}
	return errors.Join(errs...)
}

// Apply makes l hold the keys of f and no others, as a reload does: every
// key of f is installed first (a new secret replaces the old one in
// place), then the keys of l that f no longer has are removed, so that no
// peer that keeps a key is ever without one. It stops at the first key
// that fails and returns its error: the keys of f before it are installed,
// and no key of l is removed yet.
func (f File) Apply(l *tcpmd5.Listener) error {
	if f.Timed() {
		return errors.New("keyfile: the file gives keys lifetimes, which only a KeyChain follows (File.UpdateChain)")
	}
	for _, k := range f.Keys {
		if err := l.SetKey(k); err != nil {
			return err
		}
	}
	for _, k := range f.AOKeys {
		if err := l.SetAOKey(k); err != nil {
			return err
		}
	}
	type id struct {
		peer    string
		ifindex int
	}
	keep := make(map[id]bool)
	for _, k := range f.Keys {
		keep[id{k.Peer.String(), k.Ifindex}] = true
	}
	for _, k := range l.Keys() {
		if !keep[id{k.Peer.String(), k.Ifindex}] {
			if err := l.RemoveKey(k); err != nil {
				return err
			}
		}
	}
	type aoID struct {
		id
		send, recv uint8
	}
	keepAO := make(map[aoID]bool)
	for _, k := range f.AOKeys {
		keepAO[aoID{id{k.Peer.String(), k.Ifindex}, k.SendID, k.RecvID}] = true
	}
	for _, k := range l.AOKeys() {
		if !keepAO[aoID{id{k.Peer.String(), k.Ifindex}, k.SendID, k.RecvID}] {
			if err := l.RemoveAOKey(k); err != nil {
				return err
			}
		}
	}
	return nil
}
