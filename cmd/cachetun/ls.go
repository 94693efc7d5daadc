package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cachetun/cachetun/client"
	"github.com/cachetun/cachetun/control"
)

// LsCmd lists the targets the key may use, as the gateway says.
type LsCmd struct {
	ConnectCmd `embed:""`
}

// Run asks the gateway of the profile (or --server) for the list.
func (c *LsCmd) Run(e *env) error {
	if len(c.Profiles) > 1 || c.All {
		return &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("ls takes at most one PROFILE"), Hint: "run 'cachetun ls PROFILE' or 'cachetun ls --server HOST:PORT'"}
	}
	if len(c.Profiles) == 0 && len(c.Server) == 0 {
		// With every profile on one gateway, that gateway is meant.
		p, err := c.onlyGatewayProfile()
		if err != nil {
			return err
		}
		c.Profiles = []string{p}
	}
	opts, err := c.options()
	if err != nil {
		return err
	}
	opts.List, opts.Target, opts.Targets = true, "", nil
	opts.Logger, opts.Notice, opts.Passphrase = e.log, e.stderr, terminalPassphrase(e)
	cl, err := client.New(opts)
	if err != nil {
		return err
	}
	drain, _, cancel := stopContext(e.signals)
	defer cancel()
	ctx, cancelT := context.WithTimeout(drain, 30*time.Second)
	defer cancelT()
	list, err := cl.List(ctx)
	if err != nil {
		return err
	}
	if c.JSON {
		if list == nil {
			list = []control.TargetSummary{}
		}
		b, _ := json.Marshal(list)
		fmt.Fprintf(e.stdout, "%s\n", b)
		return nil
	}
	if len(list) == 0 {
		fmt.Fprintln(e.stderr, "cachetun: this key may use no target on the gateway: ask its operator to extend targets= in authorized_keys")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tTYPE\tNODES")
	for _, t := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", t.Name, t.Type, t.Nodes)
	}
	return tw.Flush()
}

// onlyGatewayProfile returns a profile of the config file when every
// profile names the same gateway (server: list), so that a bare
// 'cachetun ls' asks it; otherwise ls needs a PROFILE or --server.
func (c *LsCmd) onlyGatewayProfile() (string, error) {
	need := &control.Error{Usage: true, Fix: control.FixUser, Err: errors.New("ls needs a PROFILE or --server HOST:PORT"), Hint: "name a profile whose gateway to ask, or pass --server"}
	path, explicit := c.Config, c.Config != ""
	if !explicit {
		path = client.DefaultConfigPath()
	}
	cfg, err := client.LoadConfig(path, explicit)
	if err != nil {
		return "", err
	}
	names := slices.Sorted(maps.Keys(cfg.Profiles))
	if len(names) == 0 {
		return "", need
	}
	first := strings.Join(cfg.Profiles[names[0]].Server, ",")
	for _, n := range names[1:] {
		if strings.Join(cfg.Profiles[n].Server, ",") != first {
			need.Hint = fmt.Sprintf("the profiles of %s name several gateways: run 'cachetun ls PROFILE' (profiles: %s), or pass --server", path, strings.Join(names, ", "))
			return "", need
		}
	}
	return names[0], nil
}
