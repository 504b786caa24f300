"""Helpers shared by the test suites (host, cluster); the VM guest has its own."""
