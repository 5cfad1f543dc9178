package tracepoint_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tcplowlevel/tcpmd5/internal/tracepoint"
)

func TestParseFormat(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("testdata/tcp_hash_md5_mismatch.format") // Linux 6.18's
	require.NoError(t, err)
	f, err := tracepoint.ParseFormat(strings.NewReader(string(b)))
	require.NoError(t, err)
	assert.Equal(t, "tcp_hash_md5_mismatch", f.Name)
	assert.NotZero(t, f.ID)
	assert.Equal(t, tracepoint.Field{Offset: 8, Size: 8}, f.Fields["net_cookie"])
	assert.Equal(t, tracepoint.Field{Offset: 36, Size: 28}, f.Fields["saddr"], "the array's size, without [28] in the name")
	assert.Equal(t, tracepoint.Field{Offset: 92, Size: 4, Signed: true}, f.Fields["l3index"])
	assert.Equal(t, tracepoint.Field{Offset: 103, Size: 1}, f.Fields["syn"])

	record := make([]byte, 107)
	record[103] = 1
	assert.Equal(t, []byte{1}, f.Bytes(record, "syn"))
	assert.Nil(t, f.Bytes(record[:100], "syn"), "a short record")
	assert.Nil(t, f.Bytes(record, "keyid"), "no such field")

	for _, bad := range []string{"", "name: x\nID: 1\n", "name: x\nID: y\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n", "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:z;\tsize:4;\n"} {
		_, err := tracepoint.ParseFormat(strings.NewReader(bad))
		assert.Error(t, err, "%q", bad)
	}
}

// FuzzParseFormat checks that ParseFormat never panics and that what it
// accepts has a name, an ID and fields that lie within a record.
func FuzzParseFormat(f *testing.F) {
	b, err := os.ReadFile("testdata/tcp_hash_md5_mismatch.format")
	require.NoError(f, err)
	f.Add(string(b))
	f.Add("name: x\nID: 7\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n")
	f.Fuzz(func(t *testing.T, input string) {
		fm, err := tracepoint.ParseFormat(strings.NewReader(input))
		if err != nil {
			return
		}
		require.NotEmpty(t, fm.Name)
		require.NotZero(t, fm.ID)
		for name, fd := range fm.Fields {
			require.NotEmpty(t, name)
			require.Positive(t, fd.Size)
			require.GreaterOrEqual(t, fd.Offset, 0)
			record := make([]byte, fd.Offset+fd.Size)
			require.Len(t, fm.Bytes(record, name), fd.Size)
		}
	})
}
