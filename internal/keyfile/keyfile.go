// Package keyfile reads the key files of the tcpmd5 command: one key a
// line, the peer (an address, a prefix, or an address with a zone) then the
// secret, separated by blanks, then optionally a comment: blanks and a #
// that runs to the end of the line. Blank lines and lines whose first
// non-blank character is # are ignored.
//
// A secret is one word, or a double-quoted string for a secret with blanks,
// # or " in it; inside the quotes, \" stands for " and \\ for \. A bare
// word with # or " in it, or more words after the secret that are not a
// comment, are errors, so that a comment can never become part of a secret.
//
//	# peer            secret                    comment
//	192.0.2.1         fake-secret-router-1      # r1, AS 65001
//	2001:db8::/64     "fake secret # fabric"
//
// No error or warning of this package contains a secret.
package keyfile

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/tcplowlevel/tcpmd5"
)

// Parse reads keys in the key file format from r; name is what errors call
// the input, usually the file name. A peer given twice is an error.
func Parse(r io.Reader, name string) ([]tcpmd5.Key, error) {
	sc := bufio.NewScanner(r)
	var keys []tcpmd5.Key
	seen := make(map[netip.Prefix]int)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return nil, fmt.Errorf("%s:%d: want a peer and a secret separated by a blank, found one field", name, n)
		}
		peer := line[:i]
		if !looksLikePeer(peer) {
			// The field is not echoed: it may be a secret written first.
			return nil, fmt.Errorf("%s:%d: the first field is not an IP address or prefix such as 192.0.2.1 or 2001:db8::/64 (want: PEER SECRET)", name, n)
		}
		secret, err := parseSecret(strings.TrimLeft(line[i:], " \t"))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		k, err := tcpmd5.ParseKey(peer, secret)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		if first, dup := seen[k.Peer]; dup {
			return nil, fmt.Errorf("%s:%d: peer %s already has a key on line %d", name, n, k.Peer, first)
		}
		seen[k.Peer] = n
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return keys, nil
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
		return "", fmt.Errorf(`more than a secret follows the peer; put a secret with blanks in double quotes, and start a comment with #`)
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
func Load(path string) (keys []tcpmd5.Key, warning string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, "", err
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

// Lookup returns the key whose peer holds addr with the longest prefix.
func Lookup(keys []tcpmd5.Key, addr netip.Addr) (tcpmd5.Key, bool) {
	addr = addr.Unmap().WithZone("")
	var best tcpmd5.Key
	found := false
	for _, k := range keys {
		if k.Peer.Contains(addr) && (!found || k.Peer.Bits() > best.Peer.Bits()) {
			best, found = k, true
		}
	}
	return best, found
}
