package inventory

import (
	resourceapi "k8s.io/api/resource/v1"

	"github.com/hami-dra/hami-dra/internal/discovery"
)

// Option changes what Build publishes.
type Option func(*buildOptions)

type buildOptions struct {
	taints func(uuid string) []resourceapi.DeviceTaint
}

// WithTaints publishes the taints taints(uuid) returns on each GPU's
// device (the health package's taints of sick GPUs). Device taints are GA
// in Kubernetes 1.37: the scheduler keeps claims that do not tolerate a
// NoSchedule taint off the device, and NoExecute also evicts the pods whose
// claims use it.
func WithTaints(taints func(uuid string) []resourceapi.DeviceTaint) Option {
	return func(o *buildOptions) { o.taints = taints }
}

func (o buildOptions) apply(gpu discovery.GPU, d *resourceapi.Device) {
	if o.taints == nil {
		return
	}
	taints := o.taints(gpu.UUID)
	if len(taints) > resourceapi.DeviceTaintsMaxLength {
		taints = taints[:resourceapi.DeviceTaintsMaxLength]
	}
	d.Taints = taints
}
