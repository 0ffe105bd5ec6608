package config

// Load reads every *.yaml and *.yml file in dir (dot-files and dot-directories skipped, as
// Kubernetes ConfigMap mounts have them), every YAML document in each, validates all of them
// and compiles them. The error lists every problem found, each as
// "file:line: domain/path: field: problem".
func Load(dir string) (*Set, error) { panic("TODO") }
