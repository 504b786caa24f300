"""The volume wing: the striped scratch volume on the node's local NVMe disks.

devices (which disks, and which are ours) -> observe (what is there now) -> plan (pure: the steps)
-> apply (carry them out); setup runs them under the setup lock, status reports, state keeps the
record of the built volume (volume.json). Empty on purpose: importing a part loads only that part.
"""
