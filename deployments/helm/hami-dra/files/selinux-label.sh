#!/bin/sh
# Labels the host directories that workloads mount, so that confined
# containers may use them on SELinux-enforcing nodes (OpenShift, RHEL):
# libvgpu.so is read and mapped executable, the per-claim directories under
# the state directory are written. Files created later inherit the
# directory's type, so labelling the directories (and what is already in
# them) once per node start is enough.
#
# Environment:
#   SELINUX_FILE_TYPE  the type to give, e.g. container_file_t
#   LABEL_DIRS         space-separated host directories, mounted at the same paths
set -eu

type="${SELINUX_FILE_TYPE:?SELINUX_FILE_TYPE is not set}"
dirs="${LABEL_DIRS:?LABEL_DIRS is not set}"

for dir in $dirs; do
	mkdir -p "$dir"
	if ! chcon -R -t "$type" "$dir"; then
		echo "hami-dra: could not label $dir with $type. Is SELinux enabled on this node? Set selinux.relabel=false on nodes without SELinux." >&2
		exit 1
	fi
	echo "hami-dra: labelled $dir $type"
done
