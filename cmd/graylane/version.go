package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// runVersion prints what the binary was built from, as the Go toolchain recorded it: the module and
// its version ("(devel)" for a build without one, such as go build -buildvcs=false in a checkout),
// and the VCS revision, its time, and whether the work tree had uncommitted changes. A build
// without VCS information says that its revision is unknown.
func runVersion(_ context.Context, e *env, _ []string) error {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintf(e.stdout, "graylane: unknown version (built without module information)\ngo        %s\n", runtime.Version())
		return nil
	}
	vcs := map[string]string{}
	for _, s := range info.Settings {
		vcs[s.Key] = s.Value
	}
	fmt.Fprintf(e.stdout, "graylane  %s\nmodule    %s\n", info.Main.Version, info.Main.Path)
	if rev := vcs["vcs.revision"]; rev != "" {
		fmt.Fprintf(e.stdout, "revision  %s\n", rev)
		if t := vcs["vcs.time"]; t != "" {
			fmt.Fprintf(e.stdout, "time      %s\n", t)
		}
		if m := vcs["vcs.modified"]; m != "" {
			fmt.Fprintf(e.stdout, "modified  %s\n", m)
		}
	} else {
		fmt.Fprintln(e.stdout, "revision  unknown (the build recorded no VCS information)")
	}
	fmt.Fprintf(e.stdout, "go        %s %s/%s\n", info.GoVersion, runtime.GOOS, runtime.GOARCH)
	return nil
}
