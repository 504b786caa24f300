"""The test lab: everything the tests, the demo, the benchmarks and the Docker image build a
node or a cluster with. The product never imports it; it imports the product only through the
commands it runs. Modules the VM guest or the compose nodes import are standard library only.

- process    run a command, wait for a condition, end a process (one way each)
- kernel     loop devices, filesystems and mounts for host tests, undone by record
- sandbox    the test process's private mount namespace, state dirs and test users
- jobs       a scratch volume on a loop filesystem and Slurm-like hooks against it (host tests)
- node_boot  how a simulated node gets its /scratch (namespace cluster and compose nodes)
- node_init  PID 1 of a simulated node
- cluster    a real multi-node Slurm cluster in namespaces (cluster tests, demo)
- rootfs     a Debian trixie root with another Slurm for the cluster
"""
