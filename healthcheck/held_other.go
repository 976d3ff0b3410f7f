//go:build !(linux && (amd64 || arm64))

package healthcheck

import (
	"errors"
	"net"
	"time"
)

// Without io_uring, every prober's goroutine reads its own connection
// through Go's netpoller; the ring's methods are never called.
type heldRing struct{}

type heldConn struct{}

var heldRingSupport = func() error { return errors.ErrUnsupported }

func newHeldRing(int) (*heldRing, error)     { return nil, errors.ErrUnsupported }
func (*heldRing) close()                     {}
func (*heldRing) wake()                      {}
func (*heldRing) adopt(*prober, int, uint64) {}
func (*heldRing) release(*heldConn)          {}
func (*heldRing) send(*heldConn, []byte)     {}
func (*heldRing) wait(time.Duration)         {}
func (*heldRing) handle()                    {}
func detach(net.Conn) (int, error)           { return -1, errors.ErrUnsupported }
