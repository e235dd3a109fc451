package hamitranslate

import (
	"fmt"
	"math"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// maxListEntries bounds an annotation's list: the CEL selector built from
// it must stay far below the API's 10 KiB expression limit.
const maxListEntries = 64

// typePattern is what a GPU type may contain: the characters of NVML
// product names ("NVIDIA A100-SXM4-80GB", "Tesla V100-PCIE-32GB",
// "NVIDIA RTX 6000 Ada Generation"). Anything else could not match a GPU
// and would have to be escaped into CEL.
var typePattern = regexp.MustCompile(`^[A-Za-z0-9 ._()+/-]+$`)

// uuidPattern is NVML's UUID shape ("GPU-8a2f3c4d-…"; MIG devices "MIG-…").
var uuidPattern = regexp.MustCompile(`^[A-Za-z0-9-]+$`)

// parseList splits a HAMi list annotation ("A100,V100"). Entries are
// trimmed; an empty entry is an error, because HAMi matches an empty type
// against every GPU, which is never what a user meant.
func parseList(value string, pattern *regexp.Regexp) ([]string, error) {
	parts := strings.Split(value, ",")
	if len(parts) > maxListEntries {
		return nil, fmt.Errorf("%d entries, at most %d", len(parts), maxListEntries)
	}
	out := make([]string, 0, len(parts))
	seen := map[string]bool{}
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("entry %d is empty (a comma-separated list such as \"A100,H100\")", i+1)
		}
		if len(p) > 128 {
			return nil, fmt.Errorf("entry %d is longer than 128 characters", i+1)
		}
		if !pattern.MatchString(p) {
			return nil, fmt.Errorf("entry %q has a character outside %s", p, pattern.String())
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// parseTypes parses use-gputype / nouse-gputype. Matching ignores case, as
// HAMi's does, so the entries are upper-cased here.
func parseTypes(value string) ([]string, error) {
	list, err := parseList(value, typePattern)
	if err != nil {
		return nil, err
	}
	for i := range list {
		list[i] = strings.ToUpper(list[i])
	}
	return dedup(list), nil
}

// parseUUIDs parses use-gpuuuid / nouse-gpuuuid; UUIDs match exactly, as in
// HAMi.
func parseUUIDs(value string) ([]string, error) {
	return parseList(value, uuidPattern)
}

func dedup(list []string) []string {
	seen := map[string]bool{}
	out := list[:0]
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// parseInt reads a HAMi resource value: a whole number (HAMi reads them
// with AsInt64) within [min, max].
func parseInt(q resource.Quantity, min, max int64) (int64, error) {
	v, ok := q.AsInt64()
	if !ok {
		return 0, fmt.Errorf("must be a whole number")
	}
	if v < min || v > max {
		if max >= math.MaxInt64/mib {
			// No real upper bound: the value only has to fit in bytes.
			return 0, fmt.Errorf("must be at least %d", min)
		}
		return 0, fmt.Errorf("must be %d..%d", min, max)
	}
	return v, nil
}
