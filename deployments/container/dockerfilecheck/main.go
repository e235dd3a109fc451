// Command dockerfilecheck parses Dockerfiles with BuildKit's own front end
// (the parser and instruction checks `docker build` runs before it builds
// anything) and reports syntax errors, unknown instructions, bad flags and
// the linter's warnings. It is how deployments/container/Dockerfile is
// checked on machines without a container engine.
//
//	go run . ../Dockerfile
//
// With -copy-context SRC -to DST it also copies the build context SRC,
// filtered by the Dockerfile's .dockerignore (Dockerfile.dockerignore next
// to it), to DST, so a test can run the image's build commands on exactly
// the files the builder would see.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	contextDir := flag.String("copy-context", "", "build context to copy, filtered by the Dockerfile's .dockerignore")
	to := flag.String("to", "", "where -copy-context copies to")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: dockerfilecheck [-copy-context DIR -to DIR] DOCKERFILE...")
		os.Exit(2)
	}
	failed := false
	if *contextDir != "" {
		if *to == "" || flag.NArg() != 1 {
			fmt.Fprintln(os.Stderr, "-copy-context needs -to and exactly one Dockerfile")
			os.Exit(2)
		}
		n, err := copyContext(*contextDir, flag.Arg(0)+".dockerignore", *to)
		if err != nil {
			fmt.Fprintf(os.Stderr, "copy context: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("copied %d files of the build context to %s\n", n, *to)
	}
	for _, path := range flag.Args() {
		if err := check(path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		} else {
			fmt.Printf("%s: ok\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	for _, w := range res.Warnings {
		return fmt.Errorf("line %d: %s", w.Location, w.Short)
	}
	var lintErrs []string
	lint := linter.New(&linter.Config{Warn: func(rule, description, url, msg string, loc []parser.Range) {
		lintErrs = append(lintErrs, fmt.Sprintf("%s: %s (%v)", rule, msg, loc))
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return fmt.Errorf("instructions: %w", err)
	}
	if len(lintErrs) > 0 {
		return fmt.Errorf("lint: %v", lintErrs)
	}
	fmt.Printf("%s: %d global ARGs, %d stages:", path, len(metaArgs), len(stages))
	for _, s := range stages {
		fmt.Printf(" %s(%s, %d commands)", s.Name, s.BaseName, len(s.Commands))
	}
	fmt.Println()
	return nil
}
