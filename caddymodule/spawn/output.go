package spawn

import (
	"io"

	"go.uber.org/zap"

	"github.com/crashonly/caddy-failover/caddymodule/internal/linelog"
)

// maxLine bounds one logged line (see linelog.MaxLine).
const maxLine = linelog.MaxLine

// OutputLogger is the name, under the group's logger, of the logger that
// logs the backends' output lines: in Caddy's log,
// "http.handlers.failover.spawn.output". A backend that logs every request
// logs every heartbeat too (several a second); Caddy's log configuration can
// send this logger elsewhere, or exclude it.
const OutputLogger = "output"

// pipeLines logs every line read from r until EOF or until r is closed
// (after the process exits, see drainGrace), at info level, stdout and
// stderr alike (see linelog.Copy), under the logger named OutputLogger.
func pipeLines(log func() *zap.Logger, r io.ReadCloser, stream string, fields []zap.Field) {
	defer r.Close()
	// the slot's logger may change (a reload), so it is read at each line
	linelog.Copy(r, func() *zap.Logger { return log().Named(OutputLogger) }, stream, fields, nil)
}
