// Package redisbench reads what redis-benchmark prints with --csv, for
// both benches (bench/cmd/cachetun-bench on loopback,
// bench/cmd/cachetun-bench-wan across an emulated link), so that they read
// its figures alike.
package redisbench

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Results are the rows of one run's --csv output by test name, the first
// column: "SET" and "GET" for -t set,get, the command as given for a
// custom one ("GET wan:small", "set bench:bulk"). The header row is the
// one named "test".
type Results map[string][]string

// Parse reads the CSV in out; rows may differ in length.
func Parse(out []byte) (Results, error) {
	rows := Results{}
	r := csv.NewReader(bytes.NewReader(out))
	r.FieldsPerRecord = -1
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, fmt.Errorf("parse redis-benchmark CSV: %w", err)
		}
		if len(rec) > 0 {
			rows[rec[0]] = rec
		}
	}
}

// Value returns the number in column (a header name: "rps",
// "p99_latency_ms", ...) of test's row.
func (rows Results) Value(test, column string) (float64, error) {
	hdr, ok := rows["test"]
	if !ok {
		return 0, fmt.Errorf("no CSV header")
	}
	row, ok := rows[test]
	if !ok {
		return 0, fmt.Errorf("no CSV row %q", test)
	}
	for i, h := range hdr {
		if h == column && i < len(row) {
			return strconv.ParseFloat(row[i], 64)
		}
	}
	return 0, fmt.Errorf("no CSV column %q", column)
}

// LastLine returns the last line of a run's output, where redis-benchmark
// says why it failed. Its progress lines end in \r, so a \r ends a line
// too.
func LastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexAny(s, "\r\n"); i >= 0 {
		s = s[i+1:]
	}
	return s
}
