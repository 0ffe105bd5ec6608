// Package redisserver starts real redis-server processes on free loopback ports for tests.
//
// A missing redis-server fails the test instead of skipping it: CI installs the package, and a
// skipped test would hide a missing install step.
package redisserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	Addr string
	port int
	dir  string
	// lead are arguments before the defaults (a config file, --sentinel); args come after.
	lead []string
	args []string
	// tls is set for a server that listens for TLS only; ping then speaks TLS.
	tls  *tls.Config
	cmd  *exec.Cmd
	done chan struct{}
}

// Start starts redis-server on a free loopback port with extra command-line arguments (for
// example "--requirepass", "secret") and stops it when the test ends.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	s := newServer(t)
	s.args = args
	// A port found free can be taken by another process before redis-server binds it: then
	// it exits at once, and another port is tried.
	for range 2 {
		if err := s.tryStart(); !errors.Is(err, errExited) {
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		s.port = FreePort(t)
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	}
	s.start()
	return s
}

// errExited is tryStart's error when redis-server exits at start (most often: its port taken).
var errExited = errors.New("redis-server exited at start")

// newServer prepares a server on a free port, stopped when the test ends; start starts it.
func newServer(t testing.TB) *Server {
	t.Helper()
	mustHave(t, "redis-server", "redis-server")
	s := &Server{t: t, port: FreePort(t), dir: t.TempDir()}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	t.Cleanup(s.Stop)
	return s
}

// mustHave fails the test when a program is not installed.
func mustHave(t testing.TB, program, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(program); err != nil {
		t.Fatalf("%s is not installed (apt-get install %s): %v", program, pkg, err)
	}
}

// StartN starts n servers with the same extra arguments.
func StartN(t testing.TB, n int, args ...string) []*Server {
	t.Helper()
	out := make([]*Server, n)
	for i := range out {
		out[i] = Start(t, args...)
	}
	return out
}

// Addrs lists the servers' addresses.
func Addrs(servers []*Server) []string {
	out := make([]string, len(servers))
	for i, s := range servers {
		out[i] = s.Addr
	}
	return out
}

// URL is the redis:// URL of the server's database 0.
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

func (s *Server) start() {
	s.t.Helper()
	if err := s.tryStart(); err != nil {
		s.t.Fatal(err)
	}
}

// tryStart starts redis-server and waits until it answers.
func (s *Server) tryStart() error {
	port := strconv.Itoa(s.port)
	if s.tls != nil {
		port = "0" // TLS only: the TLS port is in args
	}
	args := append(append(append([]string{}, s.lead...),
		"--port", port, "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no",
	), s.args...)
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(s.cmd, s.done)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s.ping() == nil {
			return nil
		}
		select {
		case <-s.done:
			s.cmd = nil
			return fmt.Errorf("%w on %s", errExited, s.Addr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("redis-server on %s did not answer PING within 10s", s.Addr)
}

// ping sends an inline PING and expects +PONG (or -NOAUTH, which also proves it is up).
func (s *Server) ping() error {
	d := &net.Dialer{Timeout: time.Second}
	var conn net.Conn
	var err error
	if s.tls != nil {
		conn, err = tls.DialWithDialer(d, "tcp", s.Addr, s.tls)
	} else {
		conn, err = d.Dial("tcp", s.Addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.HasPrefix(line, "+PONG") || strings.HasPrefix(line, "-NOAUTH") {
		return nil
	}
	return fmt.Errorf("unexpected reply %q", line)
}

// Stop kills the server and waits for it to exit. It is safe to call more than once.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the server again on the same port (with an empty dataset).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
