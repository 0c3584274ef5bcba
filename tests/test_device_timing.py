"""GPU readiness without a GPU (benchmarks/device_timing.py): the CUDA paths run against a fake torch whose
events read a fake device timeline, and a fake nvidia-smi. What is checked: the asv classes time with the
run's clock (CUDA events on a GPU), the L2 is flushed before every sample there and never on the CPU, the
clock keeps its resolution over a long run, the GPU's name, driver and clocks reach asv's machine file and
the GPU script's export, and the GPU script times with the same functions."""
from __future__ import annotations

import inspect
import json
import sys
import time
import types
from pathlib import Path

import pytest

from benchmarks import bench_fused, bench_matmul, bench_presets, bench_roofline, bench_stack
from benchmarks import common as cm
from benchmarks import device_timing as dt

ROOT = Path(__file__).resolve().parents[1]
SMI = "NVIDIA H100 80GB HBM3, 550.54.15, 1980, 2619, 1755, 345"


class FakeTorch(types.ModuleType):
    """torch.cuda as device_timing uses it: events stamped from a timeline the test moves, a flush buffer."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.now_ms = 0.0
        self.log: list[str] = []
        self.int8 = "int8"
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                self.at = None

            def record(self) -> None:
                self.at = fake.now_ms
                fake.log.append("record")

            def synchronize(self) -> None:
                fake.log.append("wait")

            def elapsed_time(self, end) -> float:
                import numpy as np
                return float(np.float32(end.at - self.at))  # cudaEventElapsedTime: float32 milliseconds

        class Buffer:
            def __init__(self, size: int) -> None:
                self.size = size

            def zero_(self) -> None:
                fake.log.append(f"flush {self.size}")

        self.cuda = types.SimpleNamespace(
            Event=Event, synchronize=lambda: fake.log.append("sync"),
            get_device_properties=lambda i: types.SimpleNamespace(L2_cache_size=50 * 2**20))
        self.empty = lambda size, dtype, device: Buffer(size)


@pytest.fixture
def torch(monkeypatch) -> FakeTorch:
    fake = FakeTorch()
    monkeypatch.setitem(sys.modules, "torch", fake)
    dt._flush_buffer.cache_clear()
    yield fake
    dt._flush_buffer.cache_clear()


def timed_classes() -> list[type]:
    return [cls for module in (bench_fused, bench_presets, bench_roofline, bench_matmul, bench_stack)
            for name, cls in vars(module).items() if inspect.isclass(cls) and not name.startswith("_")
            and cls.__module__ == module.__name__ and any(m.startswith("time_") for m in dir(cls))]


def test_every_timed_class_reads_the_runs_clock_perf_counter_on_the_cpu():
    classes = timed_classes()
    assert len(classes) >= 10 and all(cls.timer is cm.TIMER for cls in classes)
    assert dt.clock("cpu") is time.perf_counter and isinstance(dt.clock("cuda"), dt.CudaEventClock)


def test_the_cuda_clock_sums_event_intervals_so_a_long_run_keeps_microseconds(torch):
    clock = dt.CudaEventClock()
    torch.now_ms = 3_600_000.0  # an hour into the process: float32 ms from a fixed start would be 0.25 ms coarse
    start = clock()
    torch.now_ms += 0.004  # a 4 µs call
    assert clock() - start == pytest.approx(4e-6, rel=1e-3)
    assert torch.log == ["record", "wait", "record", "wait"], "each reading waits for its event"


def test_a_gpu_sample_is_flushed_then_timed_by_events(torch):
    def run() -> None:
        torch.log.append("run")
        torch.now_ms += 2.5

    assert dt.sample_seconds("cuda", run) == pytest.approx(2.5e-3)
    assert torch.log == [f"flush {2 * 50 * 2**20}", "sync", "record", "run", "record", "wait"]


def test_the_cpu_is_never_flushed_and_times_with_perf_counter(torch):
    dt.flush_l2("cpu")
    assert dt.sample_seconds("cpu", lambda: None) >= 0 and torch.log == []


def test_a_gpu_machine_without_torch_times_with_perf_counter_and_flushes_nothing(torch, monkeypatch):
    monkeypatch.setattr(dt, "_torch_installed", lambda: False)
    dt.flush_l2("cuda")
    assert dt.clock("cuda") is time.perf_counter and dt.sample_seconds("cuda", lambda: None) >= 0
    assert torch.log == []


def test_the_factories_flush_before_every_sample_on_a_gpu_run_only(monkeypatch):
    """asv re-runs setup before each sample; setup's factory call is where the flush happens."""
    flushed, built = [], []
    monkeypatch.setattr(dt, "flush_l2", flushed.append)

    @cm.per_sample
    def factory(n):
        built.append(n)
        return cm.Case(abs, (n,), lambda _: None)

    for device in ("cpu", "cuda"):
        monkeypatch.setattr(cm, "DEVICES", (device,))
        assert factory(3) is factory(3)
    assert built == [3] and flushed == ["cpu", "cpu", "cuda", "cuda"]  # flush_l2 ignores "cpu"
    factory.cache_clear()
    factory(3)
    assert built == [3, 3]


def test_gpu_info_parses_nvidia_smi_and_drops_what_it_does_not_report():
    info = dt.gpu_info(lambda fields: SMI + "\n")
    assert info == {"gpu": "NVIDIA H100 80GB HBM3", "gpu_driver": "550.54.15", "gpu_sm_clock_max": "1980",
                    "gpu_mem_clock_max": "2619", "gpu_sm_clock_applications": "1755", "gpu_sm_clock_now": "345"}
    assert dt.describe(info) == ("NVIDIA H100 80GB HBM3, driver 550.54.15, SM max 1980 MHz (applications 1755), "
                                 "now 345, memory max 2619 MHz")
    assert "gpu_sm_clock_applications" not in dt.gpu_info(lambda f: SMI.replace("1755", "[N/A]"))

    def missing(fields):
        raise FileNotFoundError("nvidia-smi")

    assert dt.gpu_info(missing) == {} and dt.describe({}) == ""


def test_the_asv_machine_file_gets_the_stable_keys_not_the_current_clock(tmp_path):
    path = tmp_path / "asv-machine.json"
    path.write_text(json.dumps({"version": 1, "gpu-box": {"machine": "gpu-box", "cpu": "x"}}))
    recorded = dt.asv_machine("gpu-box", dt.gpu_info(lambda f: SMI), path)
    assert recorded["gpu"] == "NVIDIA H100 80GB HBM3" and recorded["gpu_driver"] == "550.54.15"
    assert "gpu_sm_clock_now" not in recorded, "a moving clock in asv's params would split the graphs"
    assert json.loads(path.read_text())["gpu-box"] == recorded
    with pytest.raises(SystemExit, match="asv machine --machine other"):
        dt.asv_machine("other", {}, path)


def test_the_gpu_script_times_and_records_the_gpu_with_the_same_functions(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import gpu_bench

    seen = []
    monkeypatch.setattr(gpu_bench.dt, "sample_seconds", lambda device, run: seen.append(device) or run() or 1e-3)
    samples, calls = gpu_bench._samples(lambda: None, None, gpu_bench.Plan(1, 3, 0.0, 10), "cuda")
    assert samples == [1e-3] * 3 and calls == 1 and set(seen) == {"cuda"}
    env = tmp_path / "env.json"  # what gpu_report.py env writes on the GPU machine
    env.write_text(json.dumps({"gpu_info": dt.gpu_info(lambda f: SMI)}))
    assert gpu_bench._device_info(env).startswith("NVIDIA H100 80GB HBM3, driver 550.54.15, SM max 1980 MHz")
    assert gpu_bench._device_info(None) == ""
