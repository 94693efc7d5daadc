package main

import "testing"

func TestGatewayProcs(t *testing.T) {
	for _, tc := range []struct {
		def  int
		env  string
		want int
	}{
		{1, "", 1},
		{2, "", 1},
		{3, "", 0},
		{16, "", 0},
		{2, "2", 0}, // the operator's GOMAXPROCS wins
		{2, "1", 0},
	} {
		if got := gatewayProcs(tc.def, tc.env); got != tc.want {
			t.Errorf("gatewayProcs(%d, %q) = %d, want %d", tc.def, tc.env, got, tc.want)
		}
	}
}
