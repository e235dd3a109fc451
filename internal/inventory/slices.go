package inventory

import (
	"fmt"
	"sort"
	"strings"

	resourceapi "k8s.io/api/resource/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"
)

// ResourceSlices renders resources as the ResourceSlice objects the
// kubeletplugin helper would create for nodeName. The helper lets the API
// server generate names; here they are deterministic
// (<node>-<driver>-<index>) so that the `inventory` subcommand's output can
// be diffed and tests can refer to slices.
func ResourceSlices(driverName, nodeName string, res resourceslice.DriverResources) []*resourceapi.ResourceSlice {
	poolNames := make([]string, 0, len(res.Pools))
	for name := range res.Pools {
		poolNames = append(poolNames, name)
	}
	sort.Strings(poolNames)

	var slices []*resourceapi.ResourceSlice
	for _, poolName := range poolNames {
		pool := res.Pools[poolName]
		generation := max(pool.Generation, 1)
		for i, s := range pool.Slices {
			slices = append(slices, &resourceapi.ResourceSlice{
				TypeMeta: metav1.TypeMeta{APIVersion: resourceapi.SchemeGroupVersion.String(), Kind: "ResourceSlice"},
				ObjectMeta: metav1.ObjectMeta{
					Name: fmt.Sprintf("%s-%s-%d", nodeName, strings.ReplaceAll(driverName, ".", "-"), i),
				},
				Spec: resourceapi.ResourceSliceSpec{
					Driver:   driverName,
					NodeName: ptr.To(nodeName),
					Pool: resourceapi.ResourcePool{
						Name:               poolName,
						Generation:         generation,
						ResourceSliceCount: int64(len(pool.Slices)),
					},
					Devices: s.Devices,
				},
			})
		}
	}
	return slices
}

// Equal reports whether two inventories publish the same devices, so that
// the plugin republishes (and the helper writes to the API server) only
// when something changed.
func Equal(a, b resourceslice.DriverResources) bool {
	return apiequality.Semantic.DeepEqual(a, b)
}
