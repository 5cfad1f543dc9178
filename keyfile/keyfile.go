// Package keyfile reads and writes the key files of the tcpmd5 command,
// and reloads a live [tcpmd5.Listener] from one ([File.Apply]): one key a
// line, the peer (an address, a prefix, or an address with a zone) then the
// secret, separated by blanks, then optionally a comment: blanks and a #
// that runs to the end of the line. Blank lines and lines whose first
// non-blank character is # are ignored.
//
// A TCP-AO key (RFC 5925) has the word ao and its parameters between the
// peer and the secret: "send=N recv=N alg=NAME", and optionally "mac=N"
// and "exclude-options", as tcpmd5.ParseAOKey reads them. A secret that
// looks like a parameter goes in double quotes.
//
// A secret is one word, or a double-quoted string for a secret with blanks,
// # or " in it; inside the quotes, \" stands for " and \\ for \. A bare
// word with # or " in it, or more words after the secret that are not a
// comment, are errors, so that a comment can never become part of a secret.
//
//	# peer            secret                    comment
//	192.0.2.1         fake-secret-router-1      # r1, AS 65001
//	2001:db8::/64     "fake secret # fabric"
//	192.0.2.2 ao send=1 recv=2 alg=hmac(sha1) fake-secret-router-2  # r2 speaks TCP-AO
//
// Keys that take over from each other on a schedule (a [tcpmd5.KeyChain])
// have lifetimes, given as words before the secret, each an RFC 3339 time:
// from=TIME for an MD5 key's start; for a TCP-AO key, from=TIME and
// until=TIME for both its send and accept lifetimes, or send-from=,
// send-until=, accept-from= and accept-until= for one of them. A peer may
// then have several MD5 keys, each with its own start:
//
//	192.0.2.1 fake-secret-old
//	192.0.2.1 from=2026-12-01T02:00:00Z fake-secret-new
//	192.0.2.2 ao send=1 recv=1 alg=hmac(sha1) until=2026-12-01T02:05:00Z fake-secret-ao-old
//	192.0.2.2 ao send=2 recv=2 alg=hmac(sha256) send-from=2026-12-01T02:00:00Z fake-secret-ao-new
//
// No error or warning of this package contains a secret.
package keyfile

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/tcplowlevel/tcpmd5"
)

// File is what a key file holds: MD5 keys and TCP-AO keys, and their
// lifetimes where the file gives them.
type File struct {
	Keys   []tcpmd5.Key
	AOKeys []tcpmd5.AOKey
	// Starts are the MD5 keys' starts: Starts[i] that of Keys[i]. It is
	// nil, or shorter, or holds zero times, where the file gives none.
	Starts []time.Time
	// Lifetimes are the AO keys' lifetimes: Lifetimes[i] those of
	// AOKeys[i], as Starts.
	Lifetimes []Lifetimes
}

// Lifetimes are a TCP-AO key's send and accept lifetimes.
type Lifetimes struct{ Send, Accept tcpmd5.Lifetime }

// Start returns the start of Keys[i], zero for none.
func (f File) Start(i int) time.Time {
	if i < len(f.Starts) {
		return f.Starts[i]
	}
	return time.Time{}
}

// Lifetime returns the lifetimes of AOKeys[i], zero for none.
func (f File) Lifetime(i int) Lifetimes {
	if i < len(f.Lifetimes) {
		return f.Lifetimes[i]
	}
	return Lifetimes{}
}

// Timed reports whether the file gives any key a lifetime, which only a
// [tcpmd5.KeyChain] can follow.
func (f File) Timed() bool {
	for i := range f.Keys {
		if !f.Start(i).IsZero() {
			return true
		}
	}
	for i := range f.AOKeys {
		if f.Lifetime(i) != (Lifetimes{}) {
			return true
		}
	}
	return false
}

// Parse reads keys in the key file format from r; name is what errors call
// the input, usually the file name. An MD5 peer given twice, or an AO peer
// with the same KeyIDs twice, is an error.
func Parse(r io.Reader, name string) (File, error) {
	sc := bufio.NewScanner(r)
	var f File
	type md5ID struct {
		peer netip.Prefix
		from time.Time
	}
	seen := make(map[md5ID]int)
	type aoID struct {
		peer       netip.Prefix
		send, recv uint8
	}
	seenAO := make(map[aoID]int)
	sc.Buffer(nil, maxLine)
	n := 1
	for ; sc.Scan(); n++ {
		// Only blanks and a carriage return are trimmed: a secret is taken
		// byte for byte, never shortened by a Unicode space at its end.
		line := strings.Trim(sc.Text(), " \t\r")
		if n == 1 && strings.HasPrefix(line, "\ufeff") {
			return File{}, fmt.Errorf("%s:1: the file starts with a byte-order mark (U+FEFF); save it as UTF-8 without one", name)
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return File{}, fmt.Errorf("%s:%d: want a peer and a secret separated by a blank, found one field", name, n)
		}
		peer := line[:i]
		if !looksLikePeer(peer) {
			// The field is not echoed: it may be a secret written first.
			return File{}, fmt.Errorf("%s:%d: the first field is not an IP address or prefix such as 192.0.2.1 (want: PEER SECRET)", name, n)
		}
		rest := strings.TrimLeft(line[i:], " \t")
		spec, rest, ao := aoParams(rest)
		if ao && (rest == "" || rest[0] == '#') {
			return File{}, fmt.Errorf("%s:%d: no secret after the AO parameters; quote a secret that looks like one", name, n)
		}
		lt, rest, err := lifetimeWords(rest, ao)
		if err != nil {
			return File{}, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		secret, err := parseSecret(rest)
		if err != nil {
			return File{}, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		if ao {
			k, err := tcpmd5.ParseAOKey(peer, spec, secret)
			if err != nil {
				return File{}, fmt.Errorf("%s:%d: %w", name, n, err)
			}
			id := aoID{k.Peer, k.SendID, k.RecvID}
			if first, dup := seenAO[id]; dup {
				return File{}, fmt.Errorf("%s:%d: peer %s already has an AO key with send=%d recv=%d on line %d", name, n, k.Peer, k.SendID, k.RecvID, first)
			}
			seenAO[id] = n
			f.AOKeys = append(f.AOKeys, k)
			if lt != (Lifetimes{}) {
				f.Lifetimes = append(f.Lifetimes, make([]Lifetimes, len(f.AOKeys)-1-len(f.Lifetimes))...)
				f.Lifetimes = append(f.Lifetimes, lt)
			}
			continue
		}
		k, err := tcpmd5.ParseKey(peer, secret)
		if err != nil {
			return File{}, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		from := lt.Send.From
		if first, dup := seen[md5ID{k.Peer, from}]; dup && from.IsZero() {
			return File{}, fmt.Errorf("%s:%d: peer %s already has a key on line %d", name, n, k.Peer, first)
		} else if dup {
			return File{}, fmt.Errorf("%s:%d: peer %s already has a key from %s on line %d", name, n, k.Peer, from.Format(time.RFC3339), first)
		}
		seen[md5ID{k.Peer, from}] = n
		f.Keys = append(f.Keys, k)
		if !from.IsZero() {
			f.Starts = append(f.Starts, make([]time.Time, len(f.Keys)-1-len(f.Starts))...)
			f.Starts = append(f.Starts, from)
		}
	}
	if err := sc.Err(); errors.Is(err, bufio.ErrTooLong) {
		return File{}, fmt.Errorf("%s:%d: the line is longer than %d KiB; a key line holds a peer and a secret of 80 bytes at most", name, n, maxLine>>10)
	} else if err != nil {
		return File{}, fmt.Errorf("%s:%d: %w", name, n, err)
	}
	return f, nil
}

// maxLine bounds a line of a key file, comments included.
const maxLine = 64 << 10

// aoParams splits "ao PARAM... SECRET..." into the parameters and the rest.
// Anything else is no AO line: a secret that is the bare word ao stays one.
func aoParams(s string) (spec, rest string, ok bool) {
	after, found := strings.CutPrefix(s, "ao")
	if !found || after == "" || !strings.ContainsRune(" \t", rune(after[0])) {
		return "", s, false
	}
	rest = strings.TrimLeft(after, " \t")
	var words []string
	for {
		word := rest
		if end := strings.IndexAny(rest, " \t"); end >= 0 {
			word = rest[:end]
		}
		if !isAOParam(word) {
			break
		}
		words = append(words, word)
		rest = strings.TrimLeft(rest[len(word):], " \t")
	}
	if len(words) == 0 {
		return "", s, false
	}
	return strings.Join(words, " "), rest, true
}

// lifetimeWords reads the lifetime words at the start of s: for an AO key
// (ao) from=, until= and the send- and accept- ones, for an MD5 key from=
// alone, which sets Send.From. Its errors never quote s.
func lifetimeWords(s string, ao bool) (Lifetimes, string, error) {
	var lt Lifetimes
	for {
		word := s
		if end := strings.IndexAny(s, " \t"); end >= 0 {
			word = s[:end]
		}
		name, value, ok := strings.Cut(word, "=")
		if !ok || !isLifetimeWord(name) {
			return lt, s, nil
		}
		if !ao && name != "from" {
			return lt, s, fmt.Errorf("an MD5 key has a start only (from=TIME); %s= is for TCP-AO keys", name)
		}
		t, err := time.Parse(time.RFC3339, value)
		if err != nil {
			return lt, s, fmt.Errorf("%s= takes an RFC 3339 time, such as 2026-12-01T02:00:00Z", name)
		}
		// Kept in UTC, and written so: its year must be one RFC 3339 has.
		if t = t.UTC(); t.Year() < 0 || t.Year() > 9999 {
			return lt, s, fmt.Errorf("%s= takes a time whose year in UTC is 0000 to 9999", name)
		}
		switch name {
		case "from":
			lt.Send.From, lt.Accept.From = t, t
		case "until":
			lt.Send.Until, lt.Accept.Until = t, t
		case "send-from":
			lt.Send.From = t
		case "send-until":
			lt.Send.Until = t
		case "accept-from":
			lt.Accept.From = t
		case "accept-until":
			lt.Accept.Until = t
		}
		s = strings.TrimLeft(s[len(word):], " \t")
		if s == "" || s[0] == '#' {
			return lt, s, errors.New("no secret after the lifetimes; quote a secret that looks like one")
		}
	}
}

// isLifetimeWord reports whether name= starts a lifetime word.
func isLifetimeWord(name string) bool {
	switch name {
	case "from", "until", "send-from", "send-until", "accept-from", "accept-until":
		return true
	}
	return false
}

// isAOParam reports whether word is one of an AO key's parameters.
func isAOParam(word string) bool {
	for _, p := range []string{"send=", "recv=", "alg=", "mac="} {
		if strings.HasPrefix(word, p) {
			return true
		}
	}
	return word == "exclude-options"
}

// parseSecret reads the secret at the start of s, a bare word or a quoted
// string, and requires nothing but blanks and a comment after it. Its
// errors never quote s.
func parseSecret(s string) (string, error) {
	var secret, rest string
	if strings.HasPrefix(s, "#") {
		return "", fmt.Errorf("no secret before the comment; want: PEER SECRET # comment")
	}
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' {
				if i+1 == len(s) || (s[i+1] != '"' && s[i+1] != '\\') {
					return "", fmt.Errorf(`in a quoted secret, \ goes only before " or \`)
				}
				i++
			}
			b.WriteByte(s[i])
		}
		if i == len(s) {
			return "", fmt.Errorf(`the quoted secret has no closing "`)
		}
		secret, rest = b.String(), s[i+1:]
		if rest != "" && !strings.ContainsRune(" \t#", rune(rest[0])) {
			return "", fmt.Errorf(`a blank or a comment must follow the quoted secret's closing "`)
		}
	} else {
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		secret, rest = s[:end], s[end:]
		if strings.ContainsAny(secret, `#"`) {
			return "", fmt.Errorf(`the secret holds # or "; put a secret with blanks, # or " in double quotes`)
		}
	}
	if rest = strings.TrimLeft(rest, " \t"); rest != "" && rest[0] != '#' {
		return "", fmt.Errorf(`more than a secret follows the peer; put a secret with blanks in double quotes; # starts a comment`)
	}
	for i := 0; i < len(secret); i++ {
		if c := secret[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return "", fmt.Errorf("byte %d of the secret is a control character; a secret is taken byte for byte, so remove it", i+1)
		}
	}
	return secret, nil
}

// looksLikePeer reports whether field, without its zone, is an address or
// a prefix, so that an error may quote it without quoting a secret.
func looksLikePeer(field string) bool {
	addr, _, _ := strings.Cut(field, "%")
	if _, err := netip.ParseAddr(addr); err == nil {
		return true
	}
	_, err := netip.ParsePrefix(addr)
	return err == nil
}

// Load reads the key file at path. warning, when not empty, tells the
// operator that the file is open to group or others, the way ssh warns about
// private keys.
func Load(path string) (keys File, warning string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return File{}, "", err
	}
	warning = permWarning(path, fi.Mode())
	keys, err = Parse(f, path)
	return keys, warning, err
}

// permWarning returns a warning when mode lets group or others read or
// write the file. Windows has no such bits.
func permWarning(path string, mode fs.FileMode) string {
	if runtime.GOOS == "windows" || mode.Perm()&0o077 == 0 {
		return ""
	}
	return fmt.Sprintf("key file %s is accessible by group or others (mode %04o): its secrets are not private; run chmod 600 %s", path, mode.Perm(), path)
}

// Lookup returns the keys whose peer holds addr with the longest prefix:
// an MD5 key, or the AO keys of that prefix, or both where an MD5 and an AO
// key have the same prefix (which a dial then refuses).
func (f File) Lookup(addr netip.Addr) File {
	addr = addr.Unmap().WithZone("")
	bits := -1
	for _, k := range f.Keys {
		if k.Peer.Contains(addr) {
			bits = max(bits, k.Peer.Bits())
		}
	}
	for _, k := range f.AOKeys {
		if k.Peer.Contains(addr) {
			bits = max(bits, k.Peer.Bits())
		}
	}
	var out File
	for i, k := range f.Keys {
		if k.Peer.Contains(addr) && k.Peer.Bits() == bits {
			out.Keys, out.Starts = append(out.Keys, k), append(out.Starts, f.Start(i))
		}
	}
	for i, k := range f.AOKeys {
		if k.Peer.Contains(addr) && k.Peer.Bits() == bits {
			out.AOKeys, out.Lifetimes = append(out.AOKeys, k), append(out.Lifetimes, f.Lifetime(i))
		}
	}
	return out
}

// Len is the number of keys, MD5 and AO.
func (f File) Len() int { return len(f.Keys) + len(f.AOKeys) }
