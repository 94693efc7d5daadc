package tunnel

import (
	"bytes"
	"slices"
	"testing"
)

// TestReplayBuf_SmallFirstChunk: a buffer that a small write starts takes
// a smallChunk; what does not fit goes on in resumeChunk chunks, in
// order; dropping everything leaves no slice; a buffer that a larger
// write starts takes a resumeChunk at once.
func TestReplayBuf_SmallFirstChunk(t *testing.T) {
	var b replayBuf
	var want []byte
	put := func(n int, c byte) {
		p := bytes.Repeat([]byte{c}, n)
		b.append(p)
		want = append(want, p...)
	}
	caps := func() []int {
		var out []int
		for _, c := range b.chunks {
			out = append(out, len(*c.b))
		}
		return out
	}
	check := func(wantCaps ...int) {
		t.Helper()
		got := bytes.Join(b.slices(), nil)
		if !bytes.Equal(got, want) {
			t.Fatalf("buffer holds %d bytes %q..., want %d bytes in order", len(got), got[:min(len(got), 8)], len(want))
		}
		if b.n != len(want) || b.mem != len(want) {
			t.Fatalf("n %d, mem %d: want both %d (copied chunks are charged their bytes)", b.n, b.mem, len(want))
		}
		if c := caps(); !slices.Equal(c, wantCaps) {
			t.Fatalf("chunk sizes %v, want %v", c, wantCaps)
		}
	}

	put(24, 'a') // a GET
	check(smallChunk)
	put(smallChunk-24, 'b') // fills it exactly
	check(smallChunk)
	put(1, 'c')
	check(smallChunk, resumeChunk)
	put(resumeChunk, 'd')
	check(smallChunk, resumeChunk, resumeChunk)

	// An ack of the first chunk and a part of the second.
	k := smallChunk + 100
	if freed := b.drop(k); freed != k {
		t.Fatalf("drop(%d) freed %d", k, freed)
	}
	want = want[k:]
	check(resumeChunk, resumeChunk)
	if freed := b.drop(len(want)); freed != len(want) {
		t.Fatalf("drop of the rest freed %d, want %d", freed, len(want))
	}
	want = nil
	if b.chunks != nil || b.n != 0 || b.mem != 0 {
		t.Fatalf("empty buffer keeps %d chunks, n %d, mem %d", len(b.chunks), b.n, b.mem)
	}

	put(smallChunk+1, 'e') // too big for a small chunk
	check(resumeChunk)
}
