package lab

import (
	"errors"
	"os"
	"slices"
	"time"

	"github.com/xdpolicy/xdpolicy/xdpprog"
)

// Down stops a lab's agents and servers and removes its namespaces (and with
// them every veth, address and route), its bpffs directory and its lab
// directory. It is idempotent and works on what a half-finished Up left.
func Down(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if err := CheckHost(); err != nil {
		return err
	}
	s, err := Load(name)
	if err != nil {
		s = &State{Name: name, Dir: Dir(name)}
	}
	return down(s)
}

// Exists reports whether anything of lab name is present.
func Exists(name string) bool {
	if _, err := os.Lstat(Dir(name)); err == nil {
		return true
	}
	return len(existingNetns(name+"_")) > 0
}

func down(s *State) error {
	netns := slices.Clone(s.Netns)
	for _, n := range existingNetns(s.Name + "_") {
		if !slices.Contains(netns, n) {
			netns = append(netns, n)
		}
	}
	// Everything running inside the lab's namespaces: agents, servers and
	// whatever a user started there. Agents get time to detach cleanly.
	stopProcesses(netns, 10*time.Second)
	var errs []error
	if err := downAPI(Dir(s.Name)); err != nil {
		errs = append(errs, err)
	}
	for i := len(netns) - 1; i >= 0; i-- {
		if err := delNetns(netns[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(BPFFSRoot(s.Name)); err != nil {
		errs = append(errs, err)
	}
	// The bpffs the agents mounted on a machine without one, once empty.
	if err := xdpprog.ReleaseBPFFS(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(Dir(s.Name)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
