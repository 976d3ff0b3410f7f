package spawn

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"go.uber.org/zap"
)

// maxLine bounds one logged line; the rest of a longer line is dropped and
// the entry says truncated.
const maxLine = 16 << 10

// pipeLines logs every line read from r until EOF or until r is closed
// (after the process exits, see drainGrace). Both streams are logged at info
// level, like systemd's journal does: many programs write their ordinary
// log to stderr; the field stream tells them apart.
func pipeLines(log func() *zap.Logger, r io.ReadCloser, stream string, fields []zap.Field) {
	defer r.Close()
	fields = append(fields[:len(fields):len(fields)], zap.String("stream", stream))
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		truncated := errors.Is(err, bufio.ErrBufferFull)
		logLine(log(), line, truncated, fields)
		for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of the line
			_, err = br.ReadSlice('\n')
		}
		if err != nil {
			return
		}
	}
}

func logLine(log *zap.Logger, line []byte, truncated bool, fields []zap.Field) {
	line = bytes.TrimRight(line, "\r\n")
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	ce := log.Check(zap.InfoLevel, string(line))
	if ce == nil {
		return
	}
	if truncated {
		fields = append(fields[:len(fields):len(fields)], zap.Bool("truncated", true))
	}
	ce.Write(fields...)
}
