"""ebpfw.doctor checks that need no root: kernel version parsing, headers layout, bpffs."""

from __future__ import annotations

import platform

from ebpfw import doctor


def test_kernel_versions():
    assert doctor.check_kernel("6.18.44-fc-v595").ok
    assert doctor.check_kernel("5.10.0-28-amd64").ok
    old = doctor.check_kernel("4.19.0-27-amd64")
    assert not old.ok and "older than 5.10" in old.detail and old.fix
    assert not doctor.check_kernel("garbage").ok


def test_headers_missing_gives_exact_link_commands(tmp_path):
    mdir = tmp_path / "modules"
    c = doctor.check_headers(mdir)
    assert not c.ok
    assert f"{mdir}/build" in c.detail and "autoconf.h" in c.detail
    assert "ln -sfn " in c.fix and f"{mdir}/build" in c.fix and f"{mdir}/source" in c.fix


def test_headers_present_in_a_fake_tree(tmp_path):
    build = tmp_path / f"linux-headers-{platform.release()}"
    (build / "include/generated").mkdir(parents=True)
    (build / "include/generated/autoconf.h").write_text("")
    (build / "include/linux").mkdir(parents=True)
    (build / "include/linux/kconfig.h").write_text("")
    mdir = tmp_path / "modules"
    mdir.mkdir()
    (mdir / "build").symlink_to(build)
    c = doctor.check_headers(mdir)
    assert c.ok and str(build) in c.detail and "running kernel" not in c.detail
    (build / "include/generated/autoconf.h").unlink()
    assert not doctor.check_headers(mdir).ok


def test_bpffs_check_reports_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("EBPFW_BPFFS", str(tmp_path))
    c = doctor.check_bpffs()
    assert not c.ok and "not a BPF filesystem" in c.detail and c.fix == f"mount -t bpf bpf {tmp_path}"


def test_bcc_check_names_the_interpreter():
    checks = doctor.check_bcc()
    assert checks[0].name == "bcc"
    assert __import__("sys").executable in checks[0].detail
