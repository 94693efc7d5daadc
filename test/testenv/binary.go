package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// aptPackages maps a binary to the Debian package that ships it.
var aptPackages = map[string]string{
	"redis-server":    "redis-server",
	"redis-cli":       "redis-tools",
	"redis-benchmark": "redis-tools",
	"memcached":       "memcached",
}

// RequireBinary returns the path of the executable name found in PATH. When
// it is missing, the test is skipped with a hint naming the Debian package,
// or failed when the environment variable CI is set: CI must install it.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	pkg := aptPackages[name]
	if pkg == "" {
		pkg = name
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("testenv: %s not found in PATH; CI must install it: apt-get install -y %s", name, pkg)
	}
	t.Skipf("testenv: %s not found in PATH (install it with: apt-get install -y %s)", name, pkg)
	return ""
}
