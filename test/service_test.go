// Package test holds the end-to-end tests: the real ratelimitd binary, real redis-server
// processes on free loopback ports, and real gRPC and HTTP clients.
package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ratelimitd/ratelimitd/test/redisserver"
)

// binary is the ratelimitd binary built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ratelimitd-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ratelimitd")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/ratelimitd")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build ratelimitd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output safely while it runs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// service is one running ratelimitd process with a gRPC client connected to it.
type service struct {
	t        *testing.T
	grpcAddr string
	httpAddr string
	cmd      *exec.Cmd
	logs     *syncBuffer
	done     chan struct{}
	exitErr  error
	client   rlsv3.RateLimitServiceClient
	conn     *grpc.ClientConn
}

// serviceOptions describe how to start ratelimitd.
type serviceOptions struct {
	configDir string
	redisURL  string
	args      []string
	env       []string
	// ready waits for /readyz (default); false waits only for /healthz.
	notReady bool
}

// startService starts ratelimitd on free loopback ports and stops it when the test ends.
func startService(t *testing.T, o serviceOptions) *service {
	t.Helper()
	s := &service{
		t:    t,
		logs: &syncBuffer{},
		done: make(chan struct{}),
	}
	// Port 0: the kernel picks free ports and nothing can take them first; the addresses are
	// read from the "serving" line of the log.
	args := []string{"serve", "-config", o.configDir, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0"}
	if !slices.ContainsFunc(o.args, func(a string) bool { return strings.HasPrefix(a, "-overload") }) {
		// The adaptive in-flight limit reacts to latency, which a busy test machine makes
		// noisy; only the tests of overload itself turn it on.
		args = append(args, "-overload=false")
	}
	if o.redisURL != "" {
		args = append(args, "-redis-url", o.redisURL)
	}
	s.cmd = exec.Command(binary, append(args, o.args...)...)
	s.cmd.Env = append(os.Environ(), o.env...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start ratelimitd: %v", err)
	}
	go func() {
		s.exitErr = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("ratelimitd output:\n%s", s.logs.String())
		}
	})
	s.grpcAddr, s.httpAddr = s.waitServing(15 * time.Second)
	path := "/readyz"
	if o.notReady {
		path = "/healthz"
	}
	s.waitHTTP(path, 15*time.Second)
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", s.grpcAddr, err)
	}
	t.Cleanup(func() { conn.Close() })
	s.conn = conn
	s.client = rlsv3.NewRateLimitServiceClient(conn)
	return s
}

// waitServing waits for the log line that says where the process listens and returns the
// gRPC and HTTP addresses, failing the test after limit.
func (s *service) waitServing(limit time.Duration) (grpcAddr, httpAddr string) {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(s.logs.String(), "\n") {
			var entry struct{ Msg, GRPC, HTTP string }
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "serving" && entry.GRPC != "" && entry.HTTP != "" {
				return entry.GRPC, entry.HTTP
			}
		}
		select {
		case <-s.done:
			s.t.Fatalf("ratelimitd exited before serving: %v\n%s", s.exitErr, s.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.t.Fatalf("ratelimitd did not log where it serves within %v\n%s", limit, s.logs.String())
	return "", ""
}

// waitHTTP polls path until it answers 200, failing the test after limit.
func (s *service) waitHTTP(path string, limit time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			s.t.Fatalf("ratelimitd exited before %s answered: %v\n%s", path, s.exitErr, s.logs.String())
		default:
		}
		code, body := s.get(path)
		if code == http.StatusOK {
			return
		}
		last = fmt.Sprintf("%d %s", code, body)
		time.Sleep(25 * time.Millisecond)
	}
	s.t.Fatalf("%s did not answer 200 within %v (last: %s)\n%s", path, limit, last, s.logs.String())
}

// get fetches path from the HTTP listener; code 0 means it could not connect.
func (s *service) get(path string) (int, string) {
	resp, err := http.Get("http://" + s.httpAddr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// stop sends SIGTERM and waits for the process to exit; it returns the exit error.
func (s *service) stop() error {
	select {
	case <-s.done:
		return s.exitErr
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		s.t.Errorf("ratelimitd did not stop within 15s of SIGTERM")
	}
	return s.exitErr
}

// call sends one request with a deadline.
func (s *service) call(req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.client.ShouldRateLimit(ctx, req)
}

// mustCall sends one request and fails the test on a gRPC error.
func (s *service) mustCall(req *rlsv3.RateLimitRequest) *rlsv3.RateLimitResponse {
	s.t.Helper()
	resp, err := s.call(req)
	if err != nil {
		s.t.Fatalf("ShouldRateLimit: %v", err)
	}
	return resp
}

// backends are the two stores every behaviour runs on.
type backend struct {
	name  string
	start func(t *testing.T, o serviceOptions) *service
}

func backends() []backend {
	return []backend{
		{"memory", startService},
		{"redis", func(t *testing.T, o serviceOptions) *service {
			t.Helper()
			o.redisURL = redisserver.Start(t).URL()
			return startService(t, o)
		}},
	}
}

// runBinary runs ratelimitd with args (and extra environment) to completion and returns its
// combined output.
func runBinary(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// exitCode is the exit status in err, 0 for nil and -1 when the process did not exit.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
