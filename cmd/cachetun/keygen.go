package main

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/cachetun/cachetun/auth"
	"github.com/cachetun/cachetun/control"
)

// KeygenCmd creates a new ed25519 key pair.
type KeygenCmd struct {
	File    string `short:"f" help:"Private key file to create (the public key goes to FILE.pub)." default:"~/.ssh/id_ed25519" placeholder:"FILE"`
	Comment string `short:"C" help:"Comment stored in the public key." placeholder:"TEXT"`
}

// Run writes the key pair and prints the public key line.
func (c *KeygenCmd) Run(e *env) error {
	path := auth.ExpandHome(c.File)
	comment := c.Comment
	if comment == "" {
		user := os.Getenv("USER")
		host, _ := os.Hostname()
		comment = user + "@" + host
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	pub, err := auth.GenerateKey(path, comment)
	if err != nil {
		return &control.Error{Err: err, Hint: "pick another file with -f, or use the existing key", Fix: control.FixUser}
	}
	fmt.Fprintf(e.stdout, "wrote %s and %s.pub\n", path, path)
	fmt.Fprintf(e.stdout, "give this line to the gateway's operator for authorized_keys:\n%s %s\n",
		trimNL(ssh.MarshalAuthorizedKey(pub)), comment)
	return nil
}

func trimNL(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return string(b)
}
