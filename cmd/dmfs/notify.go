package main

import (
	"net"
	"os"
	"time"
)

// notifySocketEnv is where systemd listens for a Type=notify service's
// readiness (sd_notify(3)): a unix datagram socket, "@" for the abstract
// namespace (which Go's net package understands as is).
const notifySocketEnv = "NOTIFY_SOCKET"

// notifySystemd sends state ("READY=1", "STOPPING=1", "STATUS=...", lines
// joined by "\n") to the service manager, when dmfs runs under one; it does
// nothing otherwise. The datagram either arrives whole or not at all.
func notifySystemd(state string) error {
	path := os.Getenv(notifySocketEnv)
	if path == "" {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = conn.Write([]byte(state))
	return err
}
