package control

import "errors"

// Error is the one error type of cachetun that reaches a person: the
// client's and the gateway's, from a flag to a refused key. It carries
//
//   - what went wrong: Err, whose text is the message and which is the
//     cause for errors.Is and errors.As (sentinels such as the client's
//     ErrRevoked are matched through it);
//   - what to do: Hint, one sentence without a final period, or empty;
//   - whose fix it is: Fix, the user's or the gateway operator's;
//   - whether it is a mistake in the command line or a configuration file
//     (Usage: the CLI exits with status 2) rather than a failure at run
//     time (status 1).
//
// It lives here, the lowest package that both client and server import,
// so that both speak one error; cmd/cachetun prints every error the same
// way with Message and HintOf.
type Error struct {
	Err   error
	Hint  string
	Fix   Fixer
	Usage bool
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Fixer is whose fix an error is.
type Fixer uint8

// Who fixes an error.
const (
	// FixUnknown: the error does not say (a network failure may be
	// either's).
	FixUnknown Fixer = iota
	// FixUser: the person who runs the command (a flag, a profile, a key
	// file, a local port).
	FixUser
	// FixOperator: the gateway's operator (server.yaml, authorized_keys,
	// the gateway's host and network).
	FixOperator
)

func (f Fixer) String() string {
	switch f {
	case FixUser:
		return "user"
	case FixOperator:
		return "operator"
	}
	return "unknown"
}

// HintOf returns the hint of the outermost *Error in err's chain that has
// one, or "".
func HintOf(err error) string {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return ""
		}
		if e.Hint != "" {
			return e.Hint
		}
		err = e.Err
	}
	return ""
}

// FixOf returns whose fix err is: that of the outermost *Error in its chain
// that says, or FixUnknown.
func FixOf(err error) Fixer {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return FixUnknown
		}
		if e.Fix != FixUnknown {
			return e.Fix
		}
		err = e.Err
	}
	return FixUnknown
}

// IsUsage reports whether err is a mistake in the command line or a
// configuration file: some *Error in its chain has Usage set.
func IsUsage(err error) bool {
	for err != nil {
		var e *Error
		if !errors.As(err, &e) {
			return false
		}
		if e.Usage {
			return true
		}
		err = e.Err
	}
	return false
}
