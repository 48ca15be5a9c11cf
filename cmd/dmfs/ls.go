package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/oceanum-dmfs/dmfs/session"
)

// runLs runs `dmfs ls`: the catalog as a table (or JSON), without a mount
// and without a session (the catalog is the service's, not the gateway's).
func runLs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := pflag.NewFlagSet("dmfs ls", pflag.ContinueOnError)
	flags.SetOutput(stderr)
	var (
		search, tokenFile, service string
		asJSON                     bool
		limit                      int
	)
	flags.StringVar(&search, "search", "", "only datasources matching TEXT (the catalog's own search)")
	flags.BoolVar(&asJSON, "json", false, "print JSON (one object per datasource, as .datasource.json shows it) instead of a table")
	flags.IntVar(&limit, "limit", 0, "at most N datasources (0: all)")
	flags.StringVar(&tokenFile, "token-file", os.Getenv("DATAMESH_TOKEN_FILE"),
		"read the Datamesh token from this file (env DATAMESH_TOKEN_FILE; else env DATAMESH_TOKEN)")
	flags.StringVar(&service, "service", os.Getenv("DATAMESH_SERVICE"),
		"Datamesh service URL (env DATAMESH_SERVICE; default https://datamesh.oceanum.io)")
	flags.Usage = func() {
		fmt.Fprintf(stdout, "Usage: dmfs ls [flags]\n\nLists the Datamesh catalog: id, name, time range, container.\n\nFlags:\n%s", flags.FlagUsages())
	}
	usageError := func(err error) int {
		fmt.Fprintf(stderr, "dmfs ls: %v\nRun 'dmfs ls --help' for usage.\n", err)
		return exitUsage
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		return usageError(err)
	}
	switch {
	case flags.NArg() != 0:
		return usageError(fmt.Errorf("unexpected argument %q", flags.Arg(0)))
	case limit < 0:
		return usageError(fmt.Errorf("--limit must not be negative (got %d; 0: all)", limit))
	}
	tok, err := readToken(tokenFile)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs ls: %v\n", err)
		return exitAuth
	}
	cfg, err := session.ConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintf(stderr, "dmfs ls: %v\n", err)
		return exitUsage
	}
	cfg.Token = tok
	cfg.Service, cfg.Gateway = endpoints(service, "")
	cfg.Logger = slog.New(&terminalHandler{w: stderr, prefix: "dmfs ls: ", level: slog.LevelWarn}) // retries and the like
	client, err := session.New(cfg)
	if err != nil {
		if errors.Is(err, session.ErrNoToken) {
			fmt.Fprintln(stderr, "dmfs ls: no Datamesh token: set DATAMESH_TOKEN or pass --token-file FILE")
			return exitAuth
		}
		fmt.Fprintf(stderr, "dmfs ls: %v\n", err)
		return exitUsage
	}
	list, err := client.Catalog(ctx, session.Query{Search: search, Limit: limit})
	if err != nil {
		fmt.Fprintf(stderr, "dmfs ls: reading the Datamesh catalog: %v\n", err)
		return startupCode(err)
	}
	slices.SortFunc(list, func(a, b session.Datasource) int { return strings.Compare(a.ID, b.ID) })
	if asJSON {
		infos := make([]any, len(list))
		for i, ds := range list {
			infos[i] = entryOf(ds).Info
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(infos); err != nil {
			return exitFailure
		}
		return exitOK
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tTIME RANGE\tCONTAINER")
	for _, ds := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cell(ds.ID, 80), cell(ds.Name, 60), timeRange(ds.TStart, ds.TEnd), container(ds))
	}
	if err := tw.Flush(); err != nil {
		return exitFailure
	}
	return exitOK
}

// cell makes s one printable table cell of at most n runes.
func cell(s string, n int) string {
	s = cleanText(strings.ReplaceAll(s, "\t", " "))
	if r := []rune(s); len(r) > n {
		s = string(r[:n-1]) + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}

// timeRange renders a datasource's time range, "-" for an unknown end.
func timeRange(start, end *time.Time) string {
	f := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format("2006-01-02T15:04Z")
	}
	if start == nil && end == nil {
		return "-"
	}
	return f(start) + " .. " + f(end)
}

// container is what a mount shows for a datasource, as far as the catalog
// tells without staging: its container, a dataset for Zarr drivers, else
// "?" with the driver.
func container(ds session.Datasource) string {
	switch {
	case ds.Container != "":
		return ds.Container
	case slices.Contains([]string{"zarr", "onzarr"}, strings.ToLower(ds.Driver)):
		return "dataset"
	case ds.Driver == "":
		return "?"
	}
	return "? (driver " + cell(ds.Driver, 30) + ")"
}
