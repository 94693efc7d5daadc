package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// The bench's RESP client: just PING, GET and SET.

func ping(c net.Conn, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return fmt.Errorf("send PING: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read PING reply: %w", err)
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING: reply %q, want +PONG", strings.TrimSpace(line))
	}
	return nil
}

// get sends GET key and copies the value to dst; it returns its length.
func get(c net.Conn, r *bufio.Reader, key string, dst io.Writer, timeout time.Duration) (int, error) {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(key), key); err != nil {
		return 0, fmt.Errorf("send GET: %w", err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("read GET reply: %w", err)
	}
	if len(line) < 3 || line[0] != '$' {
		return 0, fmt.Errorf("GET %s: reply %q, want a bulk string", key, strings.TrimSpace(line))
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("GET %s: reply %q, want a bulk string", key, strings.TrimSpace(line))
	}
	if _, err := io.CopyN(dst, r, int64(n)+2); err != nil {
		return 0, fmt.Errorf("read GET %s value: %w", key, err)
	}
	return n, nil
}

// set writes SET key <n bytes of 'x'> and waits for +OK.
func set(c net.Conn, r *bufio.Reader, key string, n int, timeout time.Duration) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	w := bufio.NewWriterSize(c, 256<<10)
	fmt.Fprintf(w, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", len(key), key, n)
	chunk := []byte(strings.Repeat("x", 64<<10))
	for left := n; left > 0; {
		k := min(left, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return fmt.Errorf("send SET %s: %w", key, err)
		}
		left -= k
	}
	w.WriteString("\r\n")
	if err := w.Flush(); err != nil {
		return fmt.Errorf("send SET %s: %w", key, err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read SET reply: %w", err)
	}
	if line != "+OK\r\n" {
		return fmt.Errorf("SET %s: reply %q, want +OK", key, strings.TrimSpace(line))
	}
	return nil
}
