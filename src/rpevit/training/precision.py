"""Precision of a run: the Lightning precisions accepted, those a CPU can run, and a note
where bf16 would be emulated (no native bf16 on the CPU)."""

from __future__ import annotations

from pathlib import Path

from rpevit.errors import ConfigError

PRECISIONS = ("32-true", "32", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
CPU_PRECISIONS = ("32-true", "32", "64-true", "bf16-mixed", "bf16-true")


def check_precision(precision: str, accelerator: str) -> None:
    """Reject precisions the resolved accelerator cannot run (fp16 autocast needs a GPU)."""
    if accelerator == "cpu" and precision not in CPU_PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} needs a GPU; on CPU use one of {', '.join(CPU_PRECISIONS)}"
        )


#: /proc/cpuinfo flags of CPUs with native bf16 arithmetic (x86: AVX512-BF16, AMX; Arm: BF16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU computes in bf16 natively (None: unknown, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = {
        flag
        for line in text.splitlines()
        if line.split(":")[0].strip() in ("flags", "Features")
        for flag in line.partition(":")[2].split()
    }
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def bf16_note(precision: str, accelerator: str) -> str | None:
    """A one-line note for bf16 on a CPU that lacks native bf16 (emulated: slower than fp32)."""
    if accelerator != "cpu" or not precision.startswith("bf16"):
        return None
    if cpu_has_native_bf16() is not False:
        return None
    return (
        f"rpevit: this CPU has no native bf16 ({', '.join(BF16_CPU_FLAGS)}): --precision "
        f"{precision} runs emulated and slower than 32-true; use --precision 32-true here"
    )
