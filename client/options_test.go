package client

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cachetun/cachetun/control"
)

// TestNew_RefusesBadOptions: each bad option is a usage error (exit code
// 2) whose fix is the user's, with a hint, before any key is loaded; and
// validate changes nothing.
func TestNew_RefusesBadOptions(t *testing.T) {
	port := 70000
	many := make([]TargetOptions, control.MaxHelloTargets+1)
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"transport", Options{Servers: []string{"gw"}, Target: "c", Transport: "udp"}, `unknown transport "udp"`},
		{"no server", Options{Target: "c"}, "no gateway address"},
		{"no target", Options{Servers: []string{"gw"}}, "no target name"},
		{"too many targets", Options{Servers: []string{"gw"}, Targets: many}, fmt.Sprintf("%d targets in one connect, at most %d", control.MaxHelloTargets+1, control.MaxHelloTargets)},
		{"local port", Options{Servers: []string{"gw"}, Target: "c", LocalPort: &port}, "local port 70000 out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			var ce *control.Error
			if !errors.As(err, &ce) || !ce.Usage || ce.Fix != control.FixUser || ce.Hint == "" {
				t.Fatalf("New = %#v, want a usage *control.Error for the user with a hint", err)
			}
			if err.Error() != tc.want {
				t.Fatalf("error %q, want %q", err, tc.want)
			}
			o := tc.opts
			o.setDefaults()
			before := o
			_ = o.validate()
			if o.Transport != before.Transport || o.Target != before.Target || len(o.Targets) != len(before.Targets) || o.LocalPort != before.LocalPort {
				t.Fatalf("validate changed the options: %+v, was %+v", o, before)
			}
		})
	}
}
