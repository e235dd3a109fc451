// Package gpumodel normalises NVML's GPU product names into the model and
// family identifiers the plugin publishes as device attributes, so that
// DeviceClasses compare them exactly. Plain string functions: the chart's
// tests and the plugin share them without linking NVML.
package gpumodel

import "strings"

// Name normalises NVML's product name into a model identifier that
// DeviceClasses and CEL selectors can compare exactly: the vendor and
// series words go ("NVIDIA", "Tesla"), letters are lower case, and spaces
// and dashes become single dashes. "NVIDIA A100-SXM4-80GB" is
// "a100-sxm4-80gb", "NVIDIA H100 80GB HBM3" is "h100-80gb-hbm3", "Tesla T4"
// is "t4". A substring test on the product name cannot tell A10 from A100 or
// H20 from H200; an equality test on these can.
func Name(productName string) string {
	fields := strings.FieldsFunc(strings.ToLower(productName), func(r rune) bool {
		return r == ' ' || r == '-' || r == '_' || r == '\t'
	})
	for len(fields) > 1 && (fields[0] == "nvidia" || fields[0] == "tesla") {
		fields = fields[1:]
	}
	return strings.Join(fields, "-")
}

// Family is the GPU's model without form factor and memory size:
// "a100" for every A100, "h100" for H100 SXM, PCIe and NVL, "a10g", "h20",
// "l40s". Workstation names keep their series word, whose model number
// alone would be ambiguous: "NVIDIA RTX A6000" is "rtx-a6000",
// "NVIDIA RTX 6000 Ada Generation" is "rtx-6000", "NVIDIA RTX PRO 6000
// Blackwell Server Edition" is "rtx-pro-6000".
func Family(productName string) string {
	fields := strings.Split(Name(productName), "-")
	switch fields[0] {
	case "rtx", "quadro", "geforce", "titan":
		if len(fields) > 2 && fields[1] == "pro" {
			return strings.Join(fields[:3], "-")
		}
		if len(fields) > 1 {
			return fields[0] + "-" + fields[1]
		}
	}
	return fields[0]
}
