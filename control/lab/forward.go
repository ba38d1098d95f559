package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The agents of a lab on an API server run in the node namespaces, and the
// API server listens on 127.0.0.1 of the namespace `lab up` ran in. A
// forwarder per node (`lab forward`, started inside the node namespace, so
// that `lab down` stops it with everything else there) listens on the same
// 127.0.0.1:port in the node namespace and connects each connection through
// to the API server: the agents' kubeconfig is the lab's.

// Forward accepts on addr in this process's namespace and connects each
// connection to addr in the namespace of the file descriptor target (a
// /proc/PID/ns/net or /run/netns/NAME opened by the caller), until ctx ends.
func Forward(ctx context.Context, addr string, target *os.File) error {
	dials := make(chan chan net.Conn)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- nil
		for reply := range dials {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				c = nil
			}
			reply <- c
		}
	}()
	if err := <-errc; err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	var mu sync.Mutex // one dial at a time through the dialing thread
	for {
		in, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				close(dials)
				return nil
			}
			return err
		}
		go func() {
			defer in.Close()
			reply := make(chan net.Conn, 1)
			mu.Lock()
			dials <- reply
			out := <-reply
			mu.Unlock()
			if out == nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

// startForwarders starts `lab forward` in every node namespace towards the
// API server's address (host:port of the kubeconfig's server).
func (s *State) startForwarders(hostport string) error {
	self, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return err
	}
	defer self.Close()
	for _, n := range s.Nodes {
		log := filepath.Join(s.Dir, "logs", "forward-"+n.Name+".log")
		f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		cmd := execIn(n.Netns, s.Binary, "lab", "forward", "--netns-fd", "3", "--addr", hostport)
		cmd.Stdout, cmd.Stderr = f, f
		cmd.ExtraFiles = []*os.File{self}
		err = cmd.Start()
		f.Close()
		if err != nil {
			return fmt.Errorf("forwarder in %s: %w", n.Netns, err)
		}
		s.Procs = append(s.Procs, Process{Role: "forward", Of: n.Name, PID: cmd.Process.Pid, Log: log})
		go cmd.Wait()
	}
	return s.save()
}

// apiHostPort is host:port of an https:// server URL.
func apiHostPort(server string) string {
	return strings.TrimSuffix(strings.TrimPrefix(server, "https://"), "/")
}
