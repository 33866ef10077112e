"""`auto` means what the hardware does well: the decision for each kind of machine, with the
capability probes replaced, and on this machine as it is."""

import pytest
import torch

from gptlab import GptlabError, hardware
from gptlab.hardware import cpu_has_native_bf16, resolve_dtype

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize(
    "flags, native",
    [
        ({"sse4_2", "avx", "avx2", "fma"}, False),  # AVX2 only (AMD EPYC Zen 3, most laptops)
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, False),  # AVX-512 but no BF16
        ({"avx2", "avx512f", "avx512_bf16"}, True),  # Cooper Lake, Zen 4
        ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),  # Sapphire Rapids
        (set(), False),
    ],
)
def test_cpu_bf16_is_native_only_with_avx512_bf16_or_amx(flags, native):
    assert cpu_has_native_bf16(flags) is native


@pytest.fixture
def real_cpu(monkeypatch):
    """This machine's own answer, not the suite's GPTLAB_NATIVE_BF16 switch."""
    monkeypatch.delenv(hardware.NATIVE_BF16_ENV, raising=False)


def test_without_cpuinfo_the_torch_probe_decides(monkeypatch, real_cpu):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: None)  # macOS, Windows
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    for answer in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda a=answer: a)
        assert cpu_has_native_bf16() is answer
    # a private probe that disappears or breaks says "no", it does not crash
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: 1 / 0)
    assert cpu_has_native_bf16() is False


def test_flags_are_read_from_cpuinfo(tmp_path, monkeypatch, real_cpu):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    monkeypatch.setattr(hardware, "CPUINFO", str(info))
    hardware.cpu_flags.cache_clear()
    try:
        assert hardware.cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
        assert hardware.cpu_has_native_bf16() is True
        assert hardware.cpu_name() == "Test CPU 9000"
        monkeypatch.setattr(hardware, "CPUINFO", str(tmp_path / "absent"))
        hardware.cpu_flags.cache_clear()
        assert hardware.cpu_flags() is None
    finally:
        hardware.cpu_flags.cache_clear()


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_on_a_cpu(native, expected, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda flags=None: native)
    assert resolve_dtype("auto", CPU) == expected


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_on_a_gpu(native, expected, monkeypatch):
    monkeypatch.setattr(hardware, "cuda_has_native_bf16", lambda device: native)
    assert resolve_dtype("auto", CUDA) == expected


def test_auto_never_picks_float16_and_mps_gets_float32(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda flags=None: True)
    assert resolve_dtype("auto", MPS) == "float32"


def test_explicit_dtypes_are_kept_or_refused():
    assert resolve_dtype("bfloat16", CPU) == "bfloat16"  # asked for: honoured, even if slow
    assert resolve_dtype("float32", CUDA) == "float32"
    assert resolve_dtype("float16", CUDA) == "float16"
    with pytest.raises(GptlabError, match="float16 needs a CUDA GPU"):
        resolve_dtype("float16", CPU)
    with pytest.raises(GptlabError, match="dtype must be auto"):
        resolve_dtype("int8", CPU)


def test_this_machine_agrees_with_its_own_flags(real_cpu):
    flags = hardware.cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo here")
    native = any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    assert resolve_dtype("auto", CPU) == ("bfloat16" if native else "float32")
    line = hardware.describe()
    assert hardware.cpu_name() in line and torch.__version__ in line
    assert ("avx512_bf16" in line) == ("avx512_bf16" in flags)


@pytest.mark.parametrize("value, native", [("1", True), ("0", False)])
def test_the_switch_makes_auto_what_it_is_on_another_cpu(value, native, monkeypatch):
    """GPTLAB_NATIVE_BF16 overrides this machine's flags (the suite uses it to run as on a
    CPU with AVX512-BF16) and says so in the machine's description; explicit flags win."""
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, value)
    assert resolve_dtype("auto", CPU) == ("bfloat16" if native else "float32")
    assert f"GPTLAB_NATIVE_BF16={value}" in hardware.describe()
    assert cpu_has_native_bf16({"avx2"}) is False  # a given flag set is answered as given
    monkeypatch.setenv(hardware.NATIVE_BF16_ENV, "yes")
    with pytest.raises(GptlabError, match="GPTLAB_NATIVE_BF16 must be 0 or 1, got 'yes'"):
        resolve_dtype("auto", CPU)


def test_unknown_or_absent_devices_are_one_line_errors():
    with pytest.raises(GptlabError, match="device must be auto, cpu"):
        hardware.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GptlabError, match="no CUDA GPU"):
            hardware.resolve_device("cuda")
