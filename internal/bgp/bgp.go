// Package bgp decodes the first message a BGP speaker sends (RFC 4271): an
// OPEN, whose version, AS, hold time and identifier tell an operator which
// router answered, or a NOTIFICATION, which says why it will not talk.
package bgp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Message types (RFC 4271 section 4.1).
const (
	TypeOpen         = 1
	TypeUpdate       = 2
	TypeNotification = 3
	TypeKeepalive    = 4
)

const (
	headerLen   = 19 // marker, length, type
	openMinLen  = headerLen + 10
	notifMinLen = headerLen + 2
	maxLen      = 4096
	capParam    = 2  // optional parameter: capabilities (RFC 5492)
	capAS4      = 65 // capability: 4-octet AS numbers (RFC 6793)
	asTrans     = 23456
)

var marker = bytes.Repeat([]byte{0xff}, 16)

// ErrNotBGP reports bytes that do not start with a BGP header.
var ErrNotBGP = errors.New("bgp: not a BGP message")

// Message is the first BGP message of a stream. Open is set for an OPEN,
// Notification for a NOTIFICATION.
type Message struct {
	Type         int           `json:"type"`
	Open         *Open         `json:"open,omitempty"`
	Notification *Notification `json:"notification,omitempty"`
}

// Open is what a BGP OPEN message says about its sender.
type Open struct {
	Version int `json:"version"`
	// AS is the sender's AS: the 4-octet AS capability's when present,
	// the 2-octet My Autonomous System field otherwise.
	AS           uint32     `json:"as"`
	HoldTime     int        `json:"hold_time"`
	Identifier   netip.Addr `json:"bgp_identifier"`
	Capabilities []int      `json:"capabilities,omitempty"`
}

// Notification is a BGP NOTIFICATION's error code and subcode.
type Notification struct {
	Code    int `json:"code"`
	Subcode int `json:"subcode"`
}

// IsBGP reports whether b starts with a BGP header marker, so that a
// partial read can already be recognized.
func IsBGP(b []byte) bool {
	n := min(len(b), len(marker))
	return n > 0 && bytes.Equal(b[:n], marker[:n])
}

// Parse decodes the first message in b.
func Parse(b []byte) (Message, error) {
	if len(b) < headerLen || !bytes.Equal(b[:16], marker) {
		return Message{}, ErrNotBGP
	}
	length := int(binary.BigEndian.Uint16(b[16:18]))
	if length < headerLen || length > maxLen {
		return Message{}, fmt.Errorf("bgp: header length %d is outside 19..4096", length)
	}
	if len(b) < length {
		return Message{}, fmt.Errorf("bgp: message of %d bytes truncated to %d", length, len(b))
	}
	b = b[:length]
	m := Message{Type: int(b[18])}
	switch m.Type {
	case TypeOpen:
		o, err := parseOpen(b)
		if err != nil {
			return Message{}, err
		}
		m.Open = &o
	case TypeNotification:
		if len(b) < notifMinLen {
			return Message{}, fmt.Errorf("bgp: NOTIFICATION of %d bytes is shorter than %d", len(b), notifMinLen)
		}
		m.Notification = &Notification{Code: int(b[19]), Subcode: int(b[20])}
	}
	return m, nil
}

func parseOpen(b []byte) (Open, error) {
	if len(b) < openMinLen {
		return Open{}, fmt.Errorf("bgp: OPEN of %d bytes is shorter than %d", len(b), openMinLen)
	}
	o := Open{
		Version:    int(b[19]),
		AS:         uint32(binary.BigEndian.Uint16(b[20:22])),
		HoldTime:   int(binary.BigEndian.Uint16(b[22:24])),
		Identifier: netip.AddrFrom4([4]byte(b[24:28])),
	}
	params := b[openMinLen:]
	if int(b[28]) != len(params) {
		return Open{}, fmt.Errorf("bgp: OPEN says %d bytes of optional parameters but carries %d", b[28], len(params))
	}
	for len(params) > 0 {
		if len(params) < 2 || len(params) < 2+int(params[1]) {
			return Open{}, errors.New("bgp: OPEN optional parameter runs past the message")
		}
		typ, val := params[0], params[2:2+int(params[1])]
		params = params[2+int(params[1]):]
		if typ != capParam {
			continue
		}
		for len(val) > 0 {
			if len(val) < 2 || len(val) < 2+int(val[1]) {
				return Open{}, errors.New("bgp: OPEN capability runs past its parameter")
			}
			code, cv := val[0], val[2:2+int(val[1])]
			val = val[2+int(val[1]):]
			o.Capabilities = append(o.Capabilities, int(code))
			if code == capAS4 && len(cv) == 4 {
				o.AS = binary.BigEndian.Uint32(cv)
			}
		}
	}
	return o, nil
}

// String describes the message in one line for an operator.
func (m Message) String() string {
	switch {
	case m.Open != nil:
		o := m.Open
		return fmt.Sprintf("BGP OPEN: version %d, AS %d, hold time %ds, BGP identifier %s", o.Version, o.AS, o.HoldTime, o.Identifier)
	case m.Notification != nil:
		return fmt.Sprintf("BGP NOTIFICATION: %s", m.Notification)
	}
	return fmt.Sprintf("BGP %s message", typeName(m.Type))
}

func (n Notification) String() string {
	s := fmt.Sprintf("error code %d subcode %d", n.Code, n.Subcode)
	if name, ok := codeNames[n.Code]; ok {
		s += " (" + name + ")"
	}
	return s
}

var codeNames = map[int]string{
	1: "Message Header Error",
	2: "OPEN Message Error",
	3: "UPDATE Message Error",
	4: "Hold Timer Expired",
	5: "Finite State Machine Error",
	6: "Cease",
}

func typeName(t int) string {
	switch t {
	case TypeOpen:
		return "OPEN"
	case TypeUpdate:
		return "UPDATE"
	case TypeNotification:
		return "NOTIFICATION"
	case TypeKeepalive:
		return "KEEPALIVE"
	}
	return fmt.Sprintf("type-%d", t)
}

// AppendOpen appends an OPEN message from o to b, with the 4-octet AS
// capability when o.AS does not fit two octets (AS_TRANS in the 2-octet
// field). An Identifier that is not IPv4 is written as 0.0.0.0. Peers made
// for tests and the fuzzer's round trip use it.
func AppendOpen(b []byte, o Open) []byte {
	var params []byte
	as2 := uint16(o.AS)
	if o.AS > 0xffff {
		as2 = asTrans
		params = []byte{capParam, 6, capAS4, 4}
		params = binary.BigEndian.AppendUint32(params, o.AS)
	}
	b = append(b, marker...)
	b = binary.BigEndian.AppendUint16(b, uint16(openMinLen+len(params)))
	b = append(b, TypeOpen, byte(o.Version))
	b = binary.BigEndian.AppendUint16(b, as2)
	b = binary.BigEndian.AppendUint16(b, uint16(o.HoldTime))
	var id [4]byte
	if o.Identifier.Is4() {
		id = o.Identifier.As4()
	}
	b = append(b, id[:]...)
	b = append(b, byte(len(params)))
	return append(b, params...)
}
