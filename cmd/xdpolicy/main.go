// Command xdpolicy is the one binary of the project; this package only
// wires flags to the packages under control/ and dataplane/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

func main() { os.Exit(run()) }

// usageError marks errors in how the command was called (exit status 2).
type usageError struct{ error }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := commandGroup(&cobra.Command{
		Use:           "xdpolicy",
		Short:         "Kubernetes NetworkPolicy dataplane for bare-metal nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
	})
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())}
	})
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usageError{fmt.Errorf("no help topic %q (see 'xdpolicy --help')", strings.Join(args, " "))}
			}
			return cmd.Help()
		},
	})
	root.AddCommand(probeCmd(), explainCmd(), labCmd())
	root.AddCommand(agentCmd(), cleanupCmd(), mountBPFFSCmd())
	root.AddCommand(traceCmd())
	root.AddCommand(benchCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "xdpolicy:", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// commandGroup makes c, a command that only holds subcommands, print its
// help when run alone and reject an unknown subcommand with a usage error
// (cobra rejects one only under the root, and with exit status 1; under
// another group it prints the help and exits 0).
func commandGroup(c *cobra.Command) *cobra.Command {
	c.Args = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		hint := ""
		c.SuggestionsMinimumDistance = 2
		if s := c.SuggestionsFor(args[0]); len(s) > 0 {
			hint = fmt.Sprintf("; did you mean %q?", s[0])
		}
		return usageError{fmt.Errorf("unknown command %q for %q%s (see '%s --help')", args[0], c.CommandPath(), hint, c.CommandPath())}
	}
	c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	return c
}

// noArgs rejects positional arguments with a usage error.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q (see '%s --help')", args[0], c.CommandPath())}
	}
	return nil
}
