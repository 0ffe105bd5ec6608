package test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxy forwards TCP connections on a loopback port to a target, and can stall: while stalled,
// it holds every byte it receives, as a Redis that stopped answering would. It can also delay
// every response (what the target sends back) by a set latency, as a slow Redis would: each
// chunk is delivered that long after it arrived, without holding back the chunks behind it.
type proxy struct {
	Addr    string
	target  string
	lis     net.Listener
	stalled atomic.Bool
	delay   atomic.Int64 // nanoseconds added to every response
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	resume  chan struct{}
}

// startProxy forwards to target until the test ends.
func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	var lc net.ListenConfig
	lis, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{Addr: lis.Addr().String(), target: target, lis: lis, resume: make(chan struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(up, c) })
		p.wg.Go(func() { p.pipeDelayed(c, up) })
	}
}

// pipe copies src to dst, holding data while the proxy is stalled.
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for p.stalled.Load() {
				p.mu.Lock()
				resume := p.resume
				p.mu.Unlock()
				<-resume
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pipeDelayed copies the target's responses in src to dst, each chunk delayed by the
// latency set when it arrived.
func (p *proxy) pipeDelayed(dst, src net.Conn) {
	type chunk struct {
		data []byte
		at   time.Time
	}
	queue := make(chan chunk, 1024)
	p.wg.Go(func() {
		defer dst.Close()
		for c := range queue {
			if d := time.Until(c.at); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.data); err != nil {
				for range queue {
				}
				return
			}
		}
	})
	defer close(queue)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for p.stalled.Load() {
				p.mu.Lock()
				resume := p.resume
				p.mu.Unlock()
				<-resume
			}
			queue <- chunk{data: append([]byte(nil), buf[:n]...), at: time.Now().Add(time.Duration(p.delay.Load()))}
		}
		if err != nil {
			return
		}
	}
}

// setDelay adds d to every response from now on (0: none).
func (p *proxy) setDelay(d time.Duration) { p.delay.Store(int64(d)) }

// stall holds all traffic until unstall.
func (p *proxy) stall() { p.stalled.Store(true) }

// unstall lets held and new traffic through.
func (p *proxy) unstall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled.Swap(false) {
		close(p.resume)
		p.resume = make(chan struct{})
	}
}

func (p *proxy) close() {
	p.lis.Close()
	p.unstall()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}
