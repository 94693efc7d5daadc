package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestNewLogger_Durations: text lines write a duration as Go does, JSON
// lines as a number of milliseconds under key_ms.
func TestNewLogger_Durations(t *testing.T) {
	var text, js bytes.Buffer
	newLogger(&text, "info", "text").Info("stream", "duration", 1500*time.Millisecond, "bytes_up", 6)
	newLogger(&js, "info", "json").Info("stream", "duration", 1500*time.Millisecond+250*time.Microsecond, "bytes_up", 6)
	if got := text.String(); !strings.Contains(got, " duration=1.5s bytes_up=6") {
		t.Errorf("text line %q, want duration=1.5s", got)
	}
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		t.Fatalf("json line %q: %v", js.String(), err)
	}
	if got, ok := m["duration_ms"].(float64); !ok || got != 1500.25 {
		t.Errorf("duration_ms = %#v, want 1500.25 (line %s)", m["duration_ms"], js.String())
	}
	if _, ok := m["duration"]; ok {
		t.Errorf("json line keeps duration: %s", js.String())
	}
	if m["bytes_up"] != 6.0 {
		t.Errorf("bytes_up = %#v, want 6", m["bytes_up"])
	}
}
