// Package tracepoint reads the records of one kernel tracepoint, such as
// tcp:tcp_hash_md5_mismatch, through perf_event_open(2) with a ring buffer
// per CPU, and lays them out by the event's format file in tracefs. It needs
// no BPF, only CAP_PERFMON or root.
package tracepoint

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Format is the layout of one tracepoint's records, as tracefs describes it
// in events/SYSTEM/NAME/format.
type Format struct {
	Name   string
	ID     uint64
	Fields map[string]Field
}

// Field is where one field lies in a record.
type Field struct {
	Offset, Size int
	Signed       bool
}

// ParseFormat reads a tracefs format file: its name, ID and every
// "field:TYPE NAME; offset:N; size:N; signed:N;" line.
func ParseFormat(r io.Reader) (Format, error) {
	f := Format{Fields: make(map[string]Field)}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "name:"):
			f.Name = strings.TrimSpace(strings.TrimPrefix(line, "name:"))
		case strings.HasPrefix(line, "ID:"):
			id, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "ID:")), 10, 64)
			if err != nil {
				return Format{}, fmt.Errorf("tracepoint: format: ID: %w", err)
			}
			f.ID = id
		case strings.HasPrefix(line, "field:"):
			name, fd, err := parseField(line)
			if err != nil {
				return Format{}, fmt.Errorf("tracepoint: format: %q: %w", line, err)
			}
			f.Fields[name] = fd
		}
	}
	if err := sc.Err(); err != nil {
		return Format{}, fmt.Errorf("tracepoint: format: %w", err)
	}
	if f.Name == "" || f.ID == 0 || len(f.Fields) == 0 {
		return Format{}, fmt.Errorf("tracepoint: format: no name, ID or fields")
	}
	return f, nil
}

// maxRecord bounds a record: perf carries a raw sample's size in 16 bits.
const maxRecord = 1 << 16

// parseField reads "field:__u8 saddr[28]; offset:36; size:28; signed:0;".
func parseField(line string) (string, Field, error) {
	var fd Field
	var name string
	for part := range strings.SplitSeq(line, ";") {
		key, value, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "field":
			words := strings.Fields(value)
			if len(words) == 0 {
				return "", Field{}, fmt.Errorf("no field name")
			}
			name, _, _ = strings.Cut(words[len(words)-1], "[")
		case "offset":
			fd.Offset, err = strconv.Atoi(value)
		case "size":
			fd.Size, err = strconv.Atoi(value)
		case "signed":
			fd.Signed = value == "1"
		}
		if err != nil {
			return "", Field{}, err
		}
	}
	if name == "" || fd.Size <= 0 || fd.Offset < 0 || fd.Offset+fd.Size > maxRecord {
		return "", Field{}, fmt.Errorf("want a name, and an offset and a size within %d bytes", maxRecord)
	}
	return name, fd, nil
}

// Bytes returns field name of record, or nil if the record is too short or
// the format has no such field.
func (f Format) Bytes(record []byte, name string) []byte {
	fd, ok := f.Fields[name]
	if !ok || fd.Offset+fd.Size > len(record) {
		return nil
	}
	return record[fd.Offset : fd.Offset+fd.Size]
}
