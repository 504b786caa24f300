"""The test lab: everything the tests, the demo, the benchmarks and the Docker image build a
node or a cluster with. The product never imports it (it drives the product only through the
commands and hooks it runs); nothing in it imports tests/. Modules the VM guest or the compose
nodes import are standard library only.

- process     run a command, wait for a condition, end a process: one way each
- kernel      loop devices, filesystems and mounts for host tests, undone by record
- sandbox     the test process's private mount namespace, state dirs and test users
- jobs        a scratch volume on a loop filesystem and Slurm-like hooks against it (host tests)
- fake_slurm  a fake scontrol/squeue for one node (host tests of the health check)
- toolconf    the one writer and reader of the tool's own config (slurm-scratch.conf)
- slurmconf   the one slurm.conf writer
- scontrol    the one parser of scontrol, sinfo and sdiag output
- munge       munged started and proven to answer
- node_boot   how a simulated node gets its /scratch (namespace cluster and compose nodes)
- node_init   PID 1 of a simulated node
- cluster     a real multi-node Slurm cluster in namespaces (cluster tests, demo)
- rootfs      a Debian trixie root with another Slurm for the cluster
- docker_engine  a real Docker Engine for the compose tests, the host left as it was found
- vm_image, vm_boot, vm_init.sh   the QEMU test VM: image, boot, the guest's /init
- nvme_disks, guest_node          inside the VM: NVMe/TCP disks with any identity; the node
- vm_systemd, vm_systemd_init.sh, systemd_guest   the same VM booted by systemd (host; rdinit; guest)
"""
