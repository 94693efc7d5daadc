// Package yamlx decodes cachetun's YAML config files strictly and words
// their errors for people.
package yamlx

import (
	"bytes"
	"errors"
	"io"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// DecodeStrict decodes data into v; unknown keys are errors and an empty
// document leaves v as it is.
func DecodeStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		return flatten(err)
	}
	return nil
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// flatten turns yaml.v3's multi-line errors into one sentence and words
// unknown keys plainly.
func flatten(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		msgs[i] = unknownField.ReplaceAllString(m, `unknown key "$1"`)
	}
	return errors.New(strings.Join(msgs, "; "))
}
