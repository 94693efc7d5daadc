package tunnel_test

import (
	"bytes"
	"testing"

	"github.com/cachetun/cachetun/tunnel"
)

// Benchmarks of the protocol codec: the open header, the status and the
// control frames, each encoded and decoded once per op.

var benchReq = tunnel.OpenRequest{Kind: tunnel.KindProxy, Target: "prod-redis", Node: "10.0.1.231:6379"}

func BenchmarkProto_AppendHeader(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = tunnel.AppendHeader(buf[:0], benchReq); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkProto_ReadHeader(b *testing.B) {
	hdr, err := tunnel.AppendHeader(nil, benchReq)
	if err != nil {
		b.Fatal(err)
	}
	r := bytes.NewReader(hdr)
	b.SetBytes(int64(len(hdr)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(hdr)
		req, err := tunnel.ReadHeader(r)
		if err != nil || req.Node != benchReq.Node {
			b.Fatal(req, err)
		}
	}
}

func BenchmarkProto_Status(b *testing.B) {
	buf := make([]byte, 0, 64)
	r := bytes.NewReader(nil)
	b.ReportAllocs()
	for b.Loop() {
		buf = tunnel.AppendStatus(buf[:0], tunnel.StatusOK, "")
		r.Reset(buf)
		if err := tunnel.ReadStatus(r); err != nil {
			b.Fatal(err)
		}
	}
}
