package test

import (
	"encoding/json"
	"os"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ratelimit/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestEnvoyExample decodes examples/envoy.yaml as Envoy's bootstrap (every typed_config
// resolved to its message) and runs Envoy's own validation rules on it, so that a misspelled
// field or a wrong type in the example fails here rather than in Envoy.
func TestEnvoyExample(t *testing.T) {
	b, err := os.ReadFile("../examples/envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("examples/envoy.yaml: %v", err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var boot bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &boot); err != nil {
		t.Fatalf("examples/envoy.yaml is not a valid Envoy bootstrap: %v", err)
	}
	if err := boot.ValidateAll(); err != nil {
		t.Fatalf("examples/envoy.yaml breaks Envoy's validation rules: %v", err)
	}
	if n := len(boot.GetStaticResources().GetClusters()); n != 2 {
		t.Errorf("%d clusters, want backend and ratelimitd", n)
	}
}
