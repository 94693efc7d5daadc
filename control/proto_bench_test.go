package control_test

import (
	"bytes"
	"testing"

	"github.com/cachetun/cachetun/control"
)

func BenchmarkProto_Frame(b *testing.B) {
	payload := bytes.Repeat([]byte(`{"addr":"10.0.1.230:6379","role":"master"},`), 8)
	var buf bytes.Buffer
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := control.WriteFrame(&buf, control.FrameTopology, payload); err != nil {
			b.Fatal(err)
		}
		typ, got, err := control.ReadFrame(&buf)
		if err != nil || typ != control.FrameTopology || len(got) != len(payload) {
			b.Fatal(typ, err)
		}
	}
}
