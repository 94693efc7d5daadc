package test

import (
	"bytes"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildPackages runs `make package` into a temporary directory and returns
// the .deb and .rpm it made.
func buildPackages(t *testing.T) (deb, rpm string) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make package needs make: %v", err)
	}
	dir := t.TempDir()
	start := time.Now()
	cmd := exec.Command("make", "-C", "..", "package", "PKGDIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	t.Logf("make package: %s", time.Since(start).Round(time.Millisecond))
	debs, _ := filepath.Glob(filepath.Join(dir, "cachetun_*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(dir, "cachetun-*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("make package made %v and %v, want one .deb and one .rpm", debs, rpms)
	}
	return debs[0], rpms[0]
}

func runCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPackage builds the .deb and .rpm with `make package` (nfpm), reads
// the .rpm's files, modes and scriptlets with rpm, and checks what the .deb
// holds: the binary, the systemd unit that checks the
// config before start and reload, the sysctl drop-in with 7 MiB UDP
// buffers, /etc/cachetun at mode 0750 and the maintainer scripts. Then,
// only as root with CI=true or CACHETUN_TEST_INSTALL_PACKAGE=1, it
// installs the .deb on this machine with dpkg -i — which creates the
// cachetun system user and /etc/cachetun, writes the sysctl drop-in to
// /usr/lib/sysctl.d and applies it — checks the user, the modes and owners,
// runs systemd-analyze verify on the unit and `cachetun server check` as
// the cachetun user on the installed files, and removes everything again
// with dpkg --purge (and puts net.core.rmem_max/wmem_max back). It refuses
// to run over an existing cachetun install.
func TestPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds packages: not in -short")
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skipf("no dpkg-deb (not a Debian system): %v", err)
	}
	deb, rpm := buildPackages(t)

	if b, err := os.ReadFile(rpm); err != nil || !bytes.HasPrefix(b, []byte{0xed, 0xab, 0xee, 0xdb}) {
		t.Errorf("%s is not an RPM package (lead magic): %v", rpm, err)
	}
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Fatalf("reading the .rpm needs rpm (apt package rpm, in .ci/run): %v", err)
	}
	// The .rpm's files, modes and scriptlets (rpm, the Debian package, reads it).
	dump := runCmd(t, "rpm", "-qp", "--dump", rpm)
	for _, want := range []string{
		"/etc/cachetun .* 040750 root root",
		"/usr/bin/cachetun .* 0100755 root root",
		"/usr/lib/sysctl.d/90-cachetun.conf .* 0100644 root root",
		"/usr/lib/systemd/system/cachetun.service .* 0100644 root root",
	} {
		f := strings.Fields(strings.ReplaceAll(want, ".*", ""))
		found := false
		for _, line := range strings.Split(dump, "\n") {
			if g := strings.Fields(line); len(g) >= 7 && g[0] == f[0] && g[4] == f[1] && g[5] == f[2] && g[6] == f[3] {
				found = true
			}
		}
		if !found {
			t.Errorf("rpm lacks %q:\n%s", want, dump)
		}
	}
	scripts := runCmd(t, "rpm", "-qp", "--scripts", rpm)
	for _, want := range []string{"preinstall scriptlet", "postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "useradd --system", "cachetun server init"} {
		if !strings.Contains(scripts, want) {
			t.Errorf("rpm scripts lack %q", want)
		}
	}

	info := runCmd(t, "dpkg-deb", "--info", deb)
	for _, want := range []string{"Package: cachetun", "preinst", "postinst", "prerm", "postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	list := runCmd(t, "dpkg-deb", "--contents", deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/cachetun",
		"-rw-r--r-- root/root .* ./usr/lib/systemd/system/cachetun.service",
		"-rw-r--r-- root/root .* ./usr/lib/sysctl.d/90-cachetun.conf",
		"drwxr-x--- root/root .* ./etc/cachetun/",
	} {
		if !matchLine(list, want) {
			t.Errorf("package contents lack a line like %q:\n%s", want, list)
		}
	}
	x := t.TempDir()
	runCmd(t, "dpkg-deb", "--extract", deb, x)
	sysctl, _ := os.ReadFile(filepath.Join(x, "usr/lib/sysctl.d/90-cachetun.conf"))
	for _, want := range []string{"net.core.rmem_max = 7340032", "net.core.wmem_max = 7340032"} {
		if !strings.Contains(string(sysctl), want) {
			t.Errorf("sysctl drop-in lacks %q:\n%s", want, sysctl)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(x, "usr/lib/systemd/system/cachetun.service"))
	for _, want := range []string{
		"ExecStartPre=/usr/bin/cachetun server check --config /etc/cachetun/server.yaml\n",
		"ExecStart=/usr/bin/cachetun server --config /etc/cachetun/server.yaml",
		"ExecReload=/usr/bin/cachetun server check --config /etc/cachetun/server.yaml\nExecReload=/bin/kill -HUP $MAINPID\n",
		"User=cachetun\n",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}

	if os.Geteuid() != 0 || (os.Getenv("CI") != "true" && os.Getenv("CACHETUN_TEST_INSTALL_PACKAGE") != "1") {
		t.Log("not installing the .deb: that changes this machine (a cachetun user, /etc/cachetun, sysctl); runs as root with CI=true or CACHETUN_TEST_INSTALL_PACKAGE=1")
		return
	}
	installDeb(t, deb)
}

func matchLine(text, pattern string) bool {
	parts := strings.Split(pattern, " .* ")
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, parts[0]) && strings.HasSuffix(line, parts[len(parts)-1]) {
			return true
		}
	}
	return false
}

func installDeb(t *testing.T, deb string) {
	if out, err := exec.Command("dpkg", "-s", "cachetun").CombinedOutput(); err == nil {
		t.Fatalf("cachetun is already installed here; not touching it:\n%s", out)
	}
	if _, err := user.Lookup("cachetun"); err == nil {
		t.Fatal("a cachetun user exists already; not touching it")
	}
	if _, err := os.Stat("/etc/cachetun"); err == nil {
		t.Fatal("/etc/cachetun exists already; not touching it")
	}
	// The postinstall applies the sysctl drop-in; put the machine back.
	for _, p := range []string{"/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"} {
		if old, err := os.ReadFile(p); err == nil {
			t.Cleanup(func() { _ = os.WriteFile(p, old, 0o644) })
		}
	}
	purged := false
	purge := func() {
		if out, err := exec.Command("dpkg", "--purge", "cachetun").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge cachetun: %v\n%s", err, out)
		}
		purged = true
	}
	t.Cleanup(func() {
		if !purged {
			purge()
		}
	})
	start := time.Now()
	out := runCmd(t, "dpkg", "-i", deb)
	t.Logf("dpkg -i: %s\n%s", time.Since(start).Round(time.Millisecond), out)

	u, err := user.Lookup("cachetun")
	if err != nil {
		t.Fatalf("no cachetun user after install: %v", err)
	}
	pw := runCmd(t, "getent", "passwd", "cachetun")
	if !strings.HasSuffix(strings.TrimSpace(pw), ":/usr/sbin/nologin") {
		t.Errorf("cachetun user's shell: %q, want /usr/sbin/nologin", pw)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"/etc/cachetun", os.ModeDir | 0o750},
		{"/etc/cachetun/host_ed25519", 0o600},
		{"/etc/cachetun/authorized_keys", 0o600},
		{"/etc/cachetun/server.yaml", 0o640},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Errorf("after install: %v", err)
			continue
		}
		if fi.Mode() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.mode)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; u.Uid != strconv.FormatUint(uint64(uid), 10) {
			t.Errorf("%s: owner uid %d, want cachetun (%s)", f.path, uid, u.Uid)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		out, err := exec.Command("systemd-analyze", "verify", "/usr/lib/systemd/system/cachetun.service").CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
		t.Logf("systemd-analyze verify: ok %s", out)
	} else {
		t.Log("no systemd-analyze (apt package systemd): unit not verified")
	}
	// As systemd's ExecStartPre runs it: as the cachetun user.
	check := runCmd(t, "runuser", "-u", "cachetun", "--", "/usr/bin/cachetun", "server", "check", "--config", "/etc/cachetun/server.yaml")
	if !strings.Contains(check, "/etc/cachetun/server.yaml: ok") {
		t.Errorf("server check on the installed files:\n%s", check)
	}
	t.Logf("server check:\n%s", check)

	purge()
	if _, err := user.Lookup("cachetun"); err == nil {
		t.Error("the cachetun user is still there after dpkg --purge")
	}
	for _, p := range []string{"/etc/cachetun", "/usr/bin/cachetun", "/usr/lib/systemd/system/cachetun.service", "/usr/lib/sysctl.d/90-cachetun.conf"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there after dpkg --purge", p)
		}
	}
	t.Logf("install, checks and purge: %s", time.Since(start).Round(time.Millisecond))
}
