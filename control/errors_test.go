package control

import (
	"errors"
	"fmt"
	"testing"
)

// TestError: the message is the cause's, sentinels match through it, and
// the hint, the fixer and the usage mark are found through wrapping, the
// outermost that says winning.
func TestError(t *testing.T) {
	errX := errors.New("key refused")
	inner := &Error{Err: fmt.Errorf("connect: %w", errX), Hint: "ask the operator", Fix: FixOperator}
	wrapped := fmt.Errorf("reconnect: %w", inner)
	if got := wrapped.Error(); got != "reconnect: connect: key refused" {
		t.Fatalf("message %q", got)
	}
	if !errors.Is(wrapped, errX) {
		t.Fatal("the sentinel does not match through *Error")
	}
	if h := HintOf(wrapped); h != "ask the operator" {
		t.Fatalf("HintOf = %q", h)
	}
	if f := FixOf(wrapped); f != FixOperator || f.String() != "operator" {
		t.Fatalf("FixOf = %v", f)
	}
	if IsUsage(wrapped) {
		t.Fatal("a runtime error reads as a usage error")
	}
	// An outer *Error with no hint, fixer or mark lets the inner ones show.
	outer := &Error{Err: wrapped}
	if HintOf(outer) != "ask the operator" || FixOf(outer) != FixOperator {
		t.Fatalf("outer without hint hides the inner: %q %v", HintOf(outer), FixOf(outer))
	}
	// The outermost hint wins; Usage anywhere in the chain counts.
	usage := &Error{Err: &Error{Err: errX, Hint: "inner", Usage: true}, Hint: "outer", Fix: FixUser}
	if HintOf(usage) != "outer" || FixOf(usage) != FixUser || !IsUsage(usage) {
		t.Fatalf("HintOf %q FixOf %v IsUsage %v", HintOf(usage), FixOf(usage), IsUsage(usage))
	}
	if HintOf(errX) != "" || FixOf(errX) != FixUnknown || IsUsage(errX) || HintOf(nil) != "" {
		t.Fatal("a plain error has a hint, a fixer or a usage mark")
	}
}
