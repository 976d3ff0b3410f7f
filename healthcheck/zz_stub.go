package healthcheck

import "context"

// TEMPORARY stubs until the engine branch lands.
func (p *Pool) Drain(b *Backend)                               {}
func (p *Pool) Maint(b *Backend)                               {}
func (p *Pool) Return(b *Backend)                              {}
func (p *Pool) WaitIdle(ctx context.Context, b *Backend) error { return nil }
func (b *Backend) Acquire()                                    {}
func (b *Backend) ReleaseActive()                              {}
