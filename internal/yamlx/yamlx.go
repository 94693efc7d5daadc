// Package yamlx decodes cachetun's YAML config files strictly and words
// their errors for people.
package yamlx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
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

// Located is a message about one line of a YAML document.
type Located struct {
	Line int    // 1-based
	Path string // e.g. "targets.r.nodes[0]"
	Msg  string
}

// Walk checks data against the type of v without decoding it: it returns
// every unknown key with its line (DecodeStrict stops at the first) and the
// line of every field path ("listen.quic", "targets.r.nodes[0]"), so that a
// message about a value can name its line. A syntax error is returned as
// err.
func Walk(data []byte, v any) (unknown []Located, lines map[string]int, err error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, nil, err
	}
	lines = map[string]int{}
	if len(doc.Content) == 0 {
		return nil, lines, nil
	}
	w := walker{lines: lines}
	w.node(doc.Content[0], reflect.TypeOf(v), "")
	return w.unknown, lines, nil
}

type walker struct {
	unknown []Located
	lines   map[string]int
}

func (w *walker) node(n *yaml.Node, t reflect.Type, path string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if _, ok := w.lines[path]; !ok && path != "" {
		w.lines[path] = n.Line
	}
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			fields[name] = f.Type
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				where := "at the top level"
				if path != "" {
					where = "in " + path
				}
				w.unknown = append(w.unknown, Located{Line: k.Line, Path: join(k.Value),
					Msg: fmt.Sprintf("unknown key %q %s", k.Value, where)})
				continue
			}
			w.lines[join(k.Value)] = k.Line
			w.node(val, ft, join(k.Value))
		}
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			w.lines[join(k.Value)] = k.Line
			w.node(val, t.Elem(), join(k.Value))
		}
	case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
		for i, c := range n.Content {
			w.node(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	}
}
