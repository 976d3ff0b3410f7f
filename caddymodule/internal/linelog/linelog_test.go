package linelog

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestCopy(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	long := strings.Repeat("x", MaxLine+10)
	in := "first\r\n\n   \nsecond\n" + long + "\nafter\nno newline at the end"
	var seen []string
	Copy(strings.NewReader(in), func() *zap.Logger { return logger }, "stderr",
		[]zap.Field{zap.String("backend", "b")}, func(l string) { seen = append(seen, l) })

	var msgs []string
	for _, e := range logs.All() {
		assert.Equal(t, zapcore.InfoLevel, e.Level)
		assert.Equal(t, "stderr", e.ContextMap()["stream"])
		assert.Equal(t, "b", e.ContextMap()["backend"])
		msgs = append(msgs, e.Message)
	}
	require.Len(t, msgs, 5, "blank lines are skipped")
	assert.Equal(t, "first", msgs[0])
	assert.Equal(t, "second", msgs[1])
	assert.Len(t, msgs[2], MaxLine, "a long line is cut")
	assert.Equal(t, "after", msgs[3], "the rest of a long line is dropped")
	assert.Equal(t, "no newline at the end", msgs[4])
	assert.Equal(t, msgs, seen)
	trunc := logs.FilterField(zap.Bool("truncated", true)).All()
	require.Len(t, trunc, 1)
	assert.Equal(t, msgs[2], trunc[0].Message)
}

// seen hears every line even when the level drops the entries.
func TestCopySeenWhenNotLogged(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	logger := zap.New(core)
	var seen []string
	Copy(strings.NewReader("a\nb\n"), func() *zap.Logger { return logger }, "stdout", nil, func(l string) { seen = append(seen, l) })
	assert.Zero(t, logs.Len())
	assert.Equal(t, []string{"a", "b"}, seen)
}
