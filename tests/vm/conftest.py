"""Host-side settings for tests/vm. The guest tests under guest/ run only inside the VM
(test_vm.py boots it), never in the host's own pytest process."""
collect_ignore = ["guest"]
