// Package linelog logs a process's output, line by line: the output of
// processes run by the built-in supervisor (spawn) and by the exec
// restarter.
package linelog

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"go.uber.org/zap"
)

// MaxLine bounds one logged line; the rest of a longer line is dropped and
// its entry has truncated=true.
const MaxLine = 16 << 10

// Copy logs every line read from r until EOF or a read error (as when r is
// closed) at info level, as systemd's journal does: many programs write
// their ordinary log to stderr, and the field "stream" ("stdout" or
// "stderr") tells them apart. The line is the entry's message; fields are
// added to it. Blank lines are skipped. logger is asked for the logger at
// every line, so that it may change meanwhile. If seen is not nil, it is
// called with every line that is not blank, logged or not.
func Copy(r io.Reader, logger func() *zap.Logger, stream string, fields []zap.Field, seen func(line string)) {
	fields = append(fields[:len(fields):len(fields)], zap.String("stream", stream))
	br := bufio.NewReaderSize(r, MaxLine)
	for {
		line, err := br.ReadSlice('\n')
		truncated := errors.Is(err, bufio.ErrBufferFull)
		logLine(logger(), line, truncated, fields, seen)
		for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of the line
			_, err = br.ReadSlice('\n')
		}
		if err != nil {
			return
		}
	}
}

func logLine(logger *zap.Logger, line []byte, truncated bool, fields []zap.Field, seen func(string)) {
	line = bytes.TrimRight(line, "\r\n")
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	s := string(line)
	if seen != nil {
		seen(s)
	}
	ce := logger.Check(zap.InfoLevel, s)
	if ce == nil {
		return
	}
	if truncated {
		fields = append(fields[:len(fields):len(fields)], zap.Bool("truncated", true))
	}
	ce.Write(fields...)
}
