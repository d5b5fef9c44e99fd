"""GPU discovery and worker slots (grader/devices.py), on recorded nvidia-smi outputs of real
host shapes (tests/fixtures/nvidia_smi): no GPU is needed, and none is touched."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from grader.devices import (
    MEMORY_SHARE,
    DevicesError,
    GpuDevice,
    Slot,
    SlotPool,
    describe_slots,
    device_binds,
    device_warnings,
    discover_gpus,
    driver_library_dirs,
    parse_gpu_list,
    parse_gpu_query,
    parse_mig_table,
    plan_slots,
    setup_code,
    slot_for,
)

FIXTURES = Path(__file__).parent / "fixtures" / "nvidia_smi"
A100_0 = "GPU-4f2b3c1a-8d6e-11ee-9a1b-0242ac120002"
A100_1 = "GPU-7c9e6679-7425-40de-944b-e07fc1f90ae7"
H100_1 = "GPU-b7c8d9e0-f1a2-4b3c-9d4e-5f6a7b8c9d0e"
MIG_3G, MIG_2G, MIG_1G = ("MIG-1e3b5d7f-9a2c-5e4b-8d6f-0a1b2c3d4e5f", "MIG-2f4a6c8e-0b3d-5f5c-9e7a-1b2c3d4e5f60",
                          "MIG-3a5b7d9f-1c4e-5a6d-8f8b-2c3d4e5f6071")


class RecordedSmi:
    """nvidia-smi as recorded on one host: the outputs it printed for each query."""

    def __init__(self, host: str):
        self.dir = FIXTURES / host
        rc = self.dir / "rc"
        self.rc = int(rc.read_text()) if rc.exists() else 0
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> tuple[int, str]:
        self.calls.append(args)
        name = "list.out" if args == ["-L"] else "table.out" if args == [] else "query.out"
        return self.rc, (self.dir / name).read_text()


def discover(host: str, dev_dir: Path | None = None):
    smi = RecordedSmi(host)
    return discover_gpus(smi, proc_dir=smi.dir / "proc", dev_dir=dev_dir or smi.dir / "no-dev"), smi


def gpu(uuid="GPU-x", memory_mb=81920, minor=0, name="NVIDIA A100 80GB PCIe", **kwargs) -> GpuDevice:
    return GpuDevice(index=minor, uuid=uuid, name=name, memory_mb=memory_mb, minor=minor, **kwargs)


# --- parsing -----------------------------------------------------------------------------------


def test_nvidia_smi_outputs_parse():
    listed = parse_gpu_list((FIXTURES / "mig" / "list.out").read_text())
    assert [(g.index, g.uuid, [m[2] for m in g.migs]) for g in listed] == [
        (0, "GPU-a4f3e0b2-5c1d-4e6f-8a9b-1c2d3e4f5a6b", [MIG_3G, MIG_2G, MIG_1G]), (1, H100_1, [])]
    assert listed[0].migs[2][:2] == (2, "MIG 1g.10gb") and listed[1].name == "NVIDIA H100 80GB HBM3"
    queried = parse_gpu_query((FIXTURES / "two_gpus" / "query.out").read_text())
    assert [(g.index, g.uuid, g.memory_mb, g.mig_enabled, g.bus_id) for g in queried] == [
        (0, A100_0, 81920, False, "0000:17:00.0"), (1, A100_1, 81920, False, "0000:ca:00.0")]
    assert parse_mig_table((FIXTURES / "mig" / "table.out").read_text()) == {
        (0, 0): (1, 0, 40448), (0, 1): (5, 0, 20096), (0, 2): (13, 0, 9984)}
    assert parse_mig_table((FIXTURES / "two_gpus" / "table.out").read_text()) == {}
    assert parse_gpu_query("[N/A], GPU-1, X, [N/A], [N/A], 0:0\nNo devices were found\n") == []


# --- discovery ---------------------------------------------------------------------------------


def test_no_gpu_hosts_have_no_devices_and_say_why(monkeypatch):
    inventory, _ = discover("no_driver")
    assert inventory.devices == [] and "couldn't communicate with the NVIDIA driver" in inventory.notes[0]
    nothing = discover_gpus(lambda args: (127, ""), proc_dir=Path("/nonexistent"))
    assert nothing.devices == [] and nothing.notes == []       # nvidia-smi not installed: nothing to say


def test_two_gpus_get_their_device_nodes_from_the_driver_not_from_their_index():
    inventory, smi = discover("two_gpus")
    assert [(d.index, d.uuid, d.minor, d.mig_device) for d in inventory.devices] == [
        (0, A100_0, 1, None), (1, A100_1, 0, None)]
    assert [] not in smi.calls      # no MIG GPU: the full table is never asked for


def test_without_the_drivers_proc_files_the_nodes_are_taken_in_order(tmp_path):
    for name in ("nvidia3", "nvidia5", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    smi = RecordedSmi("two_gpus")
    inventory = discover_gpus(smi, proc_dir=tmp_path / "no-proc", dev_dir=tmp_path)
    assert [d.minor for d in inventory.devices] == [3, 5]


def test_a_mig_gpu_is_its_slices_each_with_its_own_access_nodes():
    inventory, _ = discover("mig")
    by_uuid = {d.uuid: d for d in inventory.devices}
    assert list(by_uuid) == [MIG_3G, MIG_2G, MIG_1G, H100_1]      # GPU 0 itself is not a device
    assert [(by_uuid[u].name, by_uuid[u].memory_mb, by_uuid[u].minor, by_uuid[u].mig_device, by_uuid[u].cap_minors)
            for u in (MIG_3G, MIG_2G, MIG_1G)] == [
        ("MIG 3g.40gb", 40448, 0, 0, (12, 13)), ("MIG 2g.20gb", 20096, 0, 1, (48, 49)),
        ("MIG 1g.10gb", 9984, 0, 2, (120, 121))]
    assert by_uuid[H100_1].minor == 1 and by_uuid[H100_1].cap_minors == ()


# --- slots -------------------------------------------------------------------------------------


def test_cpu_only_hosts_get_one_cpu_slot_per_worker():
    slots = plan_slots(3, gpus=[])
    assert [(s.index, s.device, s.is_gpu, s.cuda_visible_devices, s.label, s.memory_fraction) for s in slots] == [
        (i, "cpu", False, "", "cpu", None) for i in range(3)]
    assert describe_slots(slots, 3) == "kernels run on the CPU (3 worker(s))"


def test_one_slot_per_gpu_by_default_and_workers_capped_at_the_gpu_slots():
    inventory, _ = discover("two_gpus")
    slots = plan_slots(4, gpus=inventory.devices)
    assert [(s.index, s.device, s.memory_fraction) for s in slots] == [(0, A100_0, MEMORY_SHARE), (1, A100_1, MEMORY_SHARE)]
    assert slots[0].label == f"cuda:{A100_0} (NVIDIA A100 80GB PCIe)" and slots[1].cuda_visible_devices == A100_1
    line = describe_slots(slots, 4)
    assert "2 GPU device(s), 2 slot(s)" in line and "--workers 4 asked for more: 2 run at once" in line
    assert [s.device for s in plan_slots(1, gpus=inventory.devices)] == [A100_0]


def test_kernels_per_gpu_spreads_over_the_gpus_first_and_splits_the_memory():
    inventory, _ = discover("two_gpus")
    slots = plan_slots(3, kernels_per_gpu=2, gpus=inventory.devices)
    assert [s.device for s in slots] == [A100_0, A100_1, A100_0]
    assert {s.memory_fraction for s in slots} == {round(MEMORY_SHARE / 2, 4)}
    assert len(plan_slots(8, kernels_per_gpu=4, gpus=inventory.devices)) == 8


def test_mig_slices_are_separate_devices():
    inventory, _ = discover("mig")
    slots = plan_slots(8, gpus=inventory.devices)
    assert [s.device for s in slots] == [MIG_3G, MIG_2G, MIG_1G, H100_1]
    assert slots[2].label == f"cuda:{MIG_1G} (MIG 1g.10gb)"


def test_too_many_kernels_for_a_gpus_memory_is_refused_naming_the_gpu():
    inventory, _ = discover("mig")
    with pytest.raises(DevicesError, match=rf"--kernels-per-gpu 5: MIG 1g.10gb {MIG_1G} has 9984 MiB.*at most 4 kernel"):
        plan_slots(8, kernels_per_gpu=5, gpus=inventory.devices)


def test_kernels_per_gpu_zero_runs_every_kernel_on_the_cpu_and_bad_counts_are_refused():
    assert {s.device for s in plan_slots(2, kernels_per_gpu=0, gpus=[gpu()])} == {"cpu"}
    with pytest.raises(DevicesError, match="--kernels-per-gpu must be 0"):
        plan_slots(2, kernels_per_gpu=-1, gpus=[])
    with pytest.raises(DevicesError, match="--workers must be at least 1"):
        plan_slots(0, gpus=[])


def test_slot_for_and_the_pool_give_each_kernel_its_own_slot():
    slots = plan_slots(2, kernels_per_gpu=2, gpus=[gpu("GPU-a", minor=0), gpu("GPU-b", minor=1)])
    assert [slot_for(i, slots).device for i in range(4)] == ["GPU-a", "GPU-b", "GPU-a", "GPU-b"]
    pool = SlotPool(slots)
    first, second = pool.take(), pool.take()
    assert (first.index, second.index) == (0, 1)
    got: list[Slot] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take()))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got          # every slot is taken: the next job waits
    pool.give_back(second)
    waiter.join(5)
    assert got == [second]


# --- what the kernel gets ------------------------------------------------------------------------


def fake_dev(tmp_path: Path, *names: str) -> Path:
    dev = tmp_path / "dev"
    for name in names:
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).touch()
    return dev


def test_a_gpu_slot_binds_its_own_node_and_the_shared_ones_only(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
    slot = plan_slots(1, gpus=[gpu("GPU-b", minor=1)])[0]
    assert device_binds(slot, dev) == [(str(dev / "nvidia1"), "/dev/nvidia1"), (str(dev / "nvidiactl"), "/dev/nvidiactl"),
                                       (str(dev / "nvidia-uvm"), "/dev/nvidia-uvm"),
                                       (str(dev / "nvidia-uvm-tools"), "/dev/nvidia-uvm-tools")]
    assert device_binds(Slot(index=0), dev) == []
    with pytest.raises(DevicesError, match="nvidia7: the device node of .* does not exist"):
        device_binds(plan_slots(1, gpus=[gpu(minor=7)])[0], dev)


def test_a_mig_slot_binds_its_two_access_nodes(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-modeset",
                   "nvidia-caps/nvidia-cap1", "nvidia-caps/nvidia-cap12", "nvidia-caps/nvidia-cap13",
                   "nvidia-caps/nvidia-cap48")
    inventory, _ = discover("mig")
    slot = plan_slots(1, gpus=inventory.devices[:1])[0]
    binds = [dest for _, dest in device_binds(slot, dev)]
    assert binds == ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-modeset",
                     "/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]
    assert device_warnings(slot, dev) == []
    other = plan_slots(1, gpus=inventory.devices[2:3])[0]      # cap120/121 are missing here
    assert "MIG slice" in device_warnings(other, dev)[0]


def test_driver_libraries_outside_the_bound_dirs_are_found():
    ldconfig = ("3 libs found in cache `/etc/ld.so.cache'\n"
                "\tlibcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12\n"
                "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n"
                "\tlibcuda.so.1 (libc6,x86-64) => /run/nvidia/driver/usr/lib64/libcuda.so.1\n"
                "\tlibnvidia-ml.so.1 (libc6,x86-64) => /run/nvidia/driver/usr/lib64/libnvidia-ml.so.1\n")
    assert driver_library_dirs(ldconfig, ["/usr", "/lib"]) == ["/run/nvidia/driver/usr/lib64"]
    assert driver_library_dirs(ldconfig, ["/usr", "/run"]) == []


def test_the_setup_cell_caps_the_memory_on_gpu_slots_only():
    assert setup_code(Slot(index=0)) is None and setup_code(None) is None
    code = setup_code(plan_slots(2, kernels_per_gpu=2, gpus=[gpu()])[1])
    assert f"set_per_process_memory_fraction({round(MEMORY_SHARE / 2, 4)!r}, 0)" in code
    namespace: dict = {}
    exec(compile(code, "setup", "exec"), namespace)   # runs on a CPU host too (torch sees no CUDA)
    assert not [name for name in namespace if name != "__builtins__"]   # it leaves no names behind


# --- the sandbox's arguments for a slot ------------------------------------------------------------


def sandbox_args(tmp_path: Path, slot: Slot | None, dev: Path) -> tuple[list[str], dict]:
    from grader.config import load_config
    from grader.sandbox import Sandbox

    (tmp_path / "scratch").mkdir()
    (tmp_path / "data").mkdir()
    sandbox = Sandbox(tmp_path / "scratch", tmp_path / "data", load_config().limits, slot=slot, dev_dir=dev)
    sandbox.runtime_dir = tmp_path / "runtime"   # what entering would make; nothing is started
    return sandbox._bwrap_args(), sandbox.environment()


def triples(args: list[str], option: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == option]


def test_bwrap_binds_a_gpu_slots_nodes_after_the_private_dev(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
    slot = plan_slots(2, gpus=[gpu("GPU-a", minor=0), gpu("GPU-b", minor=1)])[1]
    args, env = sandbox_args(tmp_path, slot, dev)
    assert triples(args, "--dev-bind")[0] == (str(dev / "nvidia1"), "/dev/nvidia1")   # not nvidia0
    assert [d for _, d in triples(args, "--dev-bind")] == [
        "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    assert args.index("--dev-bind") > args.index("--dev")         # on top of the sandbox's own /dev
    assert ("CUDA_VISIBLE_DEVICES", "GPU-b") in triples(args, "--setenv") and env["CUDA_VISIBLE_DEVICES"] == "GPU-b"


def test_bwrap_binds_nothing_of_a_gpu_for_a_cpu_slot(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidiactl", "nvidia-uvm")
    for slot in (Slot(index=0), None):
        root = tmp_path / ("cpu" if slot else "none")
        root.mkdir()
        args, env = sandbox_args(root, slot, dev)
        assert "--dev-bind" not in args and not any("nvidia" in a for a in args)
        assert ("CUDA_VISIBLE_DEVICES", "") in triples(args, "--setenv") and env["CUDA_VISIBLE_DEVICES"] == ""


def test_a_mig_slots_access_nodes_get_a_readable_parent(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-caps/nvidia-cap12", "nvidia-caps/nvidia-cap13")
    inventory, _ = discover("mig")
    args, env = sandbox_args(tmp_path, plan_slots(1, gpus=inventory.devices)[0], dev)
    assert [d for _, d in triples(args, "--dev-bind")][-2:] == ["/dev/nvidia-caps/nvidia-cap12", "/dev/nvidia-caps/nvidia-cap13"]
    made = args.index("/dev/nvidia-caps")
    assert args[made - 3: made] == ["--perms", "0755", "--dir"] and made < args.index("/dev/nvidia-caps/nvidia-cap12")
    assert env["CUDA_VISIBLE_DEVICES"] == MIG_3G


def test_a_missing_gpu_node_is_a_sandbox_error_naming_it(tmp_path):
    from grader.sandbox import SandboxError

    with pytest.raises(SandboxError, match="nvidia4: the device node"):
        sandbox_args(tmp_path, plan_slots(1, gpus=[gpu(minor=4)])[0], fake_dev(tmp_path, "nvidia0"))


def test_grade_takes_kernels_per_gpu_and_refuses_a_negative_count(tmp_path):
    from typer.testing import CliRunner

    from grader.cli import app

    runner = CliRunner()
    assert "--kernels-per-gpu" in runner.invoke(app, ["grade", "--help"]).output
    refused = runner.invoke(app, ["grade", "submissions", "--out", str(tmp_path / "out"), "--kernels-per-gpu", "-1"])
    assert refused.exit_code == 2 and "--kernels-per-gpu" in refused.output and not (tmp_path / "out").exists()


def test_the_local_runner_gives_each_worker_its_own_gpu_slot(monkeypatch, tmp_path):
    """grade's worker pool: no more workers than GPU slots, and worker i's jobs carry slot i."""
    from grader import devices
    from grader.grade import GradeOptions, JobSpec, LocalRunner

    gpus = [devices.GpuDevice(index=i, uuid=f"GPU-{i}", name="NVIDIA H200", memory_mb=143_000, minor=i)
            for i in range(2)]
    monkeypatch.setattr(devices, "discover_gpus", lambda *a, **k: devices.GpuInventory(devices=gpus))
    lines = []
    runner = LocalRunner(workers=3, threads=1, kernels_per_gpu=1, log=lines.append)
    assert runner.workers == 2 and "2 GPU device(s)" in lines[0]
    spec = JobSpec(notebook=tmp_path / "a.ipynb", folder="a", out_dir=tmp_path, options=GradeOptions(out_dir=tmp_path),
                   execution_key="e", result_key="r")
    assert [runner._with_slot(spec, i).slot.cuda_visible_devices for i in range(3)] == ["GPU-0", "GPU-1", "GPU-0"]
    assert runner._with_slot("not a grading job", 0) == "not a grading job"


# --- slots leased by cluster workers (devices.leased_slot) ----------------------------------------


from grader import devices  # noqa: E402


def _two_gpus() -> list:
    return [devices.GpuDevice(index=i, uuid=f"GPU-{i}", name="NVIDIA H200", memory_mb=143_000, minor=i)
            for i in range(2)]


def test_leased_slots_are_exclusive_and_wait_when_all_are_taken(tmp_path):
    first_lease = devices.leased_slot(1, _two_gpus(), tmp_path, poll_s=0.01)
    second_lease = devices.leased_slot(1, _two_gpus(), tmp_path, poll_s=0.01)
    first, second = first_lease.__enter__(), second_lease.__enter__()
    assert {first.device, second.device} == {"GPU-0", "GPU-1"}   # one job per GPU
    got = []

    def third_job():
        with devices.leased_slot(1, _two_gpus(), tmp_path, poll_s=0.01) as slot:
            got.append(slot.device)

    waiter = threading.Thread(target=third_job)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got    # every slot is taken: it waits
    first_lease.__exit__(None, None, None)
    waiter.join(5)
    assert got == [first.device]            # the slot freed is the one it gets
    second_lease.__exit__(None, None, None)


def test_leased_slots_share_a_gpu_by_kernels_per_gpu(tmp_path):
    import contextlib

    with contextlib.ExitStack() as held:
        slots = [held.enter_context(devices.leased_slot(2, _two_gpus(), tmp_path, poll_s=0.01)) for _ in range(4)]
    assert sorted(s.device for s in slots) == ["GPU-0", "GPU-0", "GPU-1", "GPU-1"]
    assert len({s.index for s in slots}) == 4
    assert all(s.memory_fraction == devices.memory_fraction(2) for s in slots)


def test_leased_slot_on_a_cpu_host_is_none(tmp_path):
    with devices.leased_slot(1, [], tmp_path) as slot:
        assert slot is None
    with devices.leased_slot(0, _two_gpus(), tmp_path) as slot:   # --kernels-per-gpu 0: the CPU
        assert slot is None
