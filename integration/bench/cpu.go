package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Where the time goes on a machine of 2 cores is as much a matter of CPU
// as of the gateway: the large-chunk rows say how many CPU-seconds the
// whole machine was busy (every process: the gateway, dmfs, the reader,
// this bench) during their timed part, from /proc/stat.

// clockTicks is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// machineBusy returns the CPU-seconds all cores have spent busy since boot
// (user, nice, system, irq, softirq, steal; not idle or iowait), or -1 when
// /proc/stat cannot be read.
func machineBusy() float64 {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return -1
	}
	defer f.Close()
	busy, err := parseBusy(f)
	if err != nil {
		return -1
	}
	return busy
}

// parseBusy reads the busy CPU-seconds from the "cpu" line of /proc/stat.
func parseBusy(r io.Reader) (float64, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		return 0, err
	}
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, errors.New("no cpu line in /proc/stat")
	}
	var ticks int64
	for i, f := range fields[1:9] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat field %d: %w", i+1, err)
		}
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		ticks += n
	}
	return float64(ticks) / clockTicks, nil
}

// busySince is the machine's busy CPU-seconds since start (a
// machineBusy), or -1 when either reading failed.
func busySince(start float64) float64 {
	now := machineBusy()
	if start < 0 || now < 0 {
		return -1
	}
	return now - start
}
