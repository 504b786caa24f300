"""LVM reports: one parser for what pvs, vgs and lvs print with --nameprefixes --unquoted."""

from __future__ import annotations

from slurm_scratch.volume import lvm

PVS = """\
  LVM2_PV_NAME=/dev/nvme1n1 LVM2_VG_NAME=vg.01 LVM2_VG_TAGS=slurm-scratch
  LVM2_PV_NAME=/dev/nvme2n1 LVM2_VG_NAME=vg.01 LVM2_VG_TAGS=slurm-scratch
  LVM2_PV_NAME=[unknown] LVM2_VG_NAME=vg.01 LVM2_VG_TAGS=slurm-scratch
  LVM2_PV_NAME=/dev/sdb LVM2_VG_NAME= LVM2_VG_TAGS=
"""


def test_every_row_and_field_is_read_with_empty_values_kept() -> None:
    rows = lvm.parse_report(PVS)
    assert len(rows) == 4
    assert rows[0] == {"pv_name": "/dev/nvme1n1", "vg_name": "vg.01", "vg_tags": "slurm-scratch"}
    assert rows[2]["pv_name"] == "[unknown]"
    assert rows[3] == {"pv_name": "/dev/sdb", "vg_name": "", "vg_tags": ""}


def test_values_may_hold_equal_signs_and_lines_without_fields_are_skipped() -> None:
    text = "  WARNING: something\n  LVM2_VG_NAME=vg.01 LVM2_VG_TAGS=a=b,owner:x\n\n"
    (row,) = lvm.parse_report(text)
    assert lvm.tags(row["vg_tags"]) == ("a=b", "owner:x")


def test_numbers() -> None:
    assert [lvm.number(value) for value in ("4", " 2 ", "", None, "x")] == [4, 2, 0, 0, 0]
